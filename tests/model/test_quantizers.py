"""fake_quantize against an independent numpy reference, plus its numerical invariants; LSQ,
LWC, the AbsMax gradient and per-tensor groups against numpy (forward values and the gradients
each paper derives) or plain torch autograd (PrefixQuant's gradient through the AbsMax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qat_sweep.model.layers import ActQuantizer, QuantLinear
from qat_sweep.model.quantizers import (
    FORMATS,
    LSQ_MIN_STEP,
    fake_quantize,
    kurtosis,
    lsq_init,
    lsq_quantize,
    lwc_quantize,
    nmse,
)

# Independent reference: (divisor, integer code range) or the E2M1 level list.
INT_SPECS = {"int4": (8.0, -8, 7), "int4_sym": (7.0, -7, 7), "int8": (127.0, -127, 127)}
E2M1_LEVELS = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # code c has mantissa bit c & 1
ALL_FORMATS = ["int4", "int4_sym", "fp4", "int8"]
SYMMETRIC_FORMATS = ["int4_sym", "fp4", "int8"]


def ref_e2m1(u: np.ndarray) -> np.ndarray:
    """Nearest E2M1 level by exhaustive search; ties go to the even code."""
    mag = np.minimum(np.abs(u.astype(np.float64)), 6.0)
    dist = np.abs(mag[..., None] - E2M1_LEVELS)
    best = dist.min(axis=-1, keepdims=True)
    candidates = np.isclose(dist, best, rtol=0, atol=0)
    even = candidates & (np.arange(8) % 2 == 0)
    code = np.where(even.any(-1), even.argmax(-1), candidates.argmax(-1))
    return np.sign(u) * E2M1_LEVELS[code]


def ref_fake_quantize(x: np.ndarray, fmt: str, group: int) -> np.ndarray:
    """Reference quantize-dequantize in float32 numpy, groups along the last axis."""
    x = x.astype(np.float32)
    xg = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    divisor = 6.0 if fmt == "fp4" else INT_SPECS[fmt][0]
    scale = (np.abs(xg).max(-1, keepdims=True) / np.float32(divisor)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    u = (xg / safe).astype(np.float32)
    if fmt == "fp4":
        code = ref_e2m1(u).astype(np.float32)
    else:
        _, lo, hi = INT_SPECS[fmt]
        code = np.clip(np.round(u), lo, hi).astype(np.float32)
    return (code * scale).astype(np.float32).reshape(x.shape)


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("group", [8, 32, "channel"])
def test_matches_numpy_reference(fmt: str, group: int | str) -> None:
    x = gaussian(64, 128) * torch.logspace(-3, 3, 128)  # wide dynamic range across groups
    g = 128 if group == "channel" else group
    expected = ref_fake_quantize(x.numpy(), fmt, g)
    np.testing.assert_array_equal(fake_quantize(x, fmt, group).numpy(), expected)


@pytest.mark.parametrize("fmt", ["int4", "int4_sym", "int8"])
def test_integer_levels_exhaustive(fmt: str) -> None:
    divisor, lo, hi = INT_SPECS[fmt]
    # A group whose absmax is `divisor` has scale exactly 1: every code maps to itself.
    codes = torch.arange(lo, hi + 1, dtype=torch.float32)
    group = torch.cat([codes, torch.tensor([-divisor])])
    out = fake_quantize(group[None], fmt, group.numel())[0]
    torch.testing.assert_close(out, group.clamp(lo, hi), rtol=0, atol=0)
    # Every value in [-absmax, absmax] lands on the nearest code (ties to even), clipped.
    fine = torch.linspace(-divisor, divisor, 4001)
    x = torch.cat([fine, torch.tensor([-divisor])])
    out = fake_quantize(x[None], fmt, x.numel())[0][:-1]
    assert set(out.unique().tolist()) == set(range(lo, hi + 1))
    np.testing.assert_array_equal(out.numpy(), np.clip(np.round(fine.numpy()), lo, hi))


def test_int4_paper_convention_clips_the_positive_extreme() -> None:
    out = fake_quantize(torch.tensor([[1.0, 0.5, -0.25, 0.0]]), "int4", 4)
    torch.testing.assert_close(out, torch.tensor([[0.875, 0.5, -0.25, 0.0]]), rtol=0, atol=0)
    out = fake_quantize(torch.tensor([[-1.0, 0.5]]), "int4", 2)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.5]]), rtol=0, atol=0)


def test_fp4_levels_exhaustive() -> None:
    levels = torch.tensor(E2M1_LEVELS, dtype=torch.float32)
    group = torch.cat([levels, -levels])  # absmax 6: scale 1
    torch.testing.assert_close(fake_quantize(group[None], "fp4", 16)[0], group, rtol=0, atol=0)
    fine = torch.linspace(-6, 6, 6001)
    out = fake_quantize(fine[None], "fp4", "channel")[0]
    assert set(out.abs().unique().tolist()) == set(E2M1_LEVELS.tolist())
    np.testing.assert_array_equal(out.numpy(), ref_e2m1(fine.numpy()).astype(np.float32))


def test_fp4_ties_round_to_even() -> None:
    x = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]])
    expected = torch.tensor([[6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]])
    torch.testing.assert_close(fake_quantize(x, "fp4", 8), expected, rtol=0, atol=0)
    torch.testing.assert_close(fake_quantize(-x, "fp4", 8), -expected, rtol=0, atol=0)
    # A clipping factor of 0.5 makes the scale 12 * 0.5 / 6 = 1: everything above 6 gives 6.
    x = torch.tensor([[12.0, 7.0, 6.5, -9.0, 0.75]])
    out = fake_quantize(x, "fp4", 5, clip=torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.tensor([[6.0, 6.0, 6.0, -6.0, 1.0]]), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", SYMMETRIC_FORMATS)
def test_idempotent(fmt: str) -> None:
    once = fake_quantize(gaussian(256, 256), fmt, 32)
    torch.testing.assert_close(fake_quantize(once, fmt, 32), once, rtol=0, atol=0)


def test_int4_idempotent_only_when_absmax_is_negative() -> None:
    x = gaussian(512, 32).abs().neg()  # the negative extreme sets the scale and stays -8 s
    once = fake_quantize(x, "int4", 32)
    torch.testing.assert_close(fake_quantize(once, "int4", 32), once, rtol=0, atol=0)
    once = fake_quantize(torch.tensor([[1.0, 0.5]]), "int4", 2)  # +absmax clipped to 7 s
    assert not torch.equal(fake_quantize(once, "int4", 2), once)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_group_locality(fmt: str) -> None:
    x = gaussian(4, 128)
    spiked = x.clone()
    spiked[1, 40] = 1000.0  # inside group 1 (elements 32..63) of row 1
    before, after = fake_quantize(x, fmt, 32), fake_quantize(spiked, fmt, 32)
    changed = (before != after).nonzero().tolist()
    assert changed and all(r == 1 and 32 <= c < 64 for r, c in changed)


@pytest.mark.parametrize("fmt", SYMMETRIC_FORMATS)
def test_sign_symmetry(fmt: str) -> None:
    x = gaussian(64, 64)
    torch.testing.assert_close(
        fake_quantize(-x, fmt, 16), -fake_quantize(x, fmt, 16), rtol=0, atol=0
    )


def test_int4_is_not_sign_symmetric() -> None:
    x = torch.tensor([[1.0, 0.5]])
    assert fake_quantize(-x, "int4", 2).tolist() == [[-1.0, -0.5]]
    assert (-fake_quantize(x, "int4", 2)).tolist() == [[-0.875, -0.5]]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("power", [-12, -3, 1, 9])
def test_power_of_two_scale_invariance(fmt: str, power: int) -> None:
    x = gaussian(32, 64)
    factor = 2.0**power
    scaled = fake_quantize(x * factor, fmt, 16)
    torch.testing.assert_close(scaled, fake_quantize(x, fmt, 16) * factor, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_ste_gradient_is_identity_except_where_clipped(fmt: str) -> None:
    x = gaussian(16, 64).requires_grad_()
    grad_out = gaussian(16, 64, seed=1)
    fake_quantize(x, fmt, 16).backward(grad_out)
    if fmt == "int4":
        # u = x / (absmax / 8) from 7.5 up rounds past 7 (e.g. a positive maximum, u = 8).
        xg = x.detach().reshape(16, 4, 16)
        u = xg / (xg.abs().amax(-1, keepdim=True) / 8)
        clipped = (u >= 7.5).reshape(16, 64)
        assert clipped.any()
    else:
        clipped = torch.zeros(16, 64, dtype=torch.bool)
    torch.testing.assert_close(x.grad, torch.where(clipped, 0.0, grad_out), rtol=0, atol=0)


def test_ste_gradient_zero_where_clip_factor_clips() -> None:
    x = torch.tensor([[14.0, 7.4, 7.6, -7.4, -7.6, 3.0]], requires_grad=True)
    out = fake_quantize(x, "int4_sym", 6, clip=torch.tensor([0.5]))  # scale 14 * 0.5 / 7 = 1
    out.backward(torch.ones(1, 6))
    assert out.tolist() == [[7.0, 7.0, 7.0, -7.0, -7.0, 3.0]]
    # 7.4 rounds to the code 7 itself; 7.6 and 14 would round past 7: those codes were clipped.
    assert x.grad.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]]


# Exact tie points u (scale 1): (u, gradient passes?) under ties-to-even on the unbounded grid.
TIES = {
    "int4": [(7.5, False), (-7.5, True), (-8.5, True), (6.5, True), (7.0, True), (-9.0, False)],
    "int4_sym": [(7.5, False), (-7.5, False), (6.5, True), (-6.5, True), (7.0, True)],
    "int8": [(127.5, False), (-127.5, False), (126.5, True), (-126.5, True), (127.0, True)],
    "fp4": [(7.0, False), (-7.0, False), (5.0, True), (6.0, True), (6.5, True), (-6.99, True)],
}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_ste_gradient_at_exact_ties_with_lac(fmt: str) -> None:
    """clip 0.5 and an absmax of 2 x divisor make the scale exactly 1, so u = x bit for bit."""
    divisor = 6.0 if fmt == "fp4" else INT_SPECS[fmt][0]
    values, passes = zip(*TIES[fmt], strict=True)
    x = torch.tensor([[2 * divisor, *values]], requires_grad=True)
    clip = torch.tensor([0.5], requires_grad=True)
    fake_quantize(x, fmt, x.shape[1], clip=clip).sum().backward()
    # 2 x divisor rounds far outside the range: clipped, no gradient.
    assert x.grad[0].tolist() == [0.0, *(1.0 if p else 0.0 for p in passes)]
    # Agrees with OmniQuant's clamp(round_ste(u)) written with plain autograd.
    _check_against_round_ste(x.detach(), clip.detach(), fmt, x.grad, clip.grad)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_ste_gradient_at_exact_ties_without_lac(fmt: str) -> None:
    """AbsMax alone: only int4 (s = absmax / 8, codes up to 7) can clip, from u = 7.5 up."""
    divisor = 6.0 if fmt == "fp4" else INT_SPECS[fmt][0]
    half = {"int4": 7.5, "int4_sym": 6.5, "int8": 126.5, "fp4": 5.0}[fmt]
    x = torch.tensor([[divisor, half, -half, -divisor, 1.5]], requires_grad=True)  # scale 1
    fake_quantize(x, fmt, 5).sum().backward()
    expected = [0.0, 0.0, 1.0, 1.0, 1.0] if fmt == "int4" else [1.0] * 5
    assert x.grad[0].tolist() == expected


def _check_against_round_ste(x, clip, fmt, grad_x, grad_clip) -> None:
    lo, hi = (-6.0, 6.0) if fmt == "fp4" else INT_SPECS[fmt][1:]
    divisor = 6.0 if fmt == "fp4" else INT_SPECS[fmt][0]
    x_ref, clip_ref = x.clone().requires_grad_(), clip.clone().requires_grad_()
    scale = x_ref.detach().abs().amax(-1, keepdim=True) / divisor * clip_ref
    u = x_ref / scale
    code = (u + (_ref_unbounded_grid(u.detach(), fmt) - u).detach()).clamp(lo, hi)
    (code * scale).sum().backward()
    torch.testing.assert_close(grad_x, x_ref.grad, rtol=0, atol=0)
    torch.testing.assert_close(grad_clip, clip_ref.grad)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_clip_factor_gradient_matches_round_ste_reference(fmt: str) -> None:
    """Same gradients as OmniQuant's clamp(round_ste(x / s)) * s written with plain autograd."""
    lo, hi = (-6.0, 6.0) if fmt == "fp4" else INT_SPECS[fmt][1:]
    divisor = 6.0 if fmt == "fp4" else INT_SPECS[fmt][0]
    x = gaussian(8, 64)
    grad_out = gaussian(8, 64, seed=2)
    clip = torch.tensor([0.9, 0.6, 1.0, 0.4], requires_grad=True)
    x1 = x.clone().requires_grad_()
    fake_quantize(x1, fmt, 16, clip=clip).backward(grad_out)

    clip_ref = clip.detach().clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    xg = x2.reshape(8, 4, 16)
    scale = xg.detach().abs().amax(-1, keepdim=True) / divisor * clip_ref[:, None]
    u = xg / scale
    code = (u + (_ref_unbounded_grid(u.detach(), fmt) - u).detach()).clamp(lo, hi)
    (code * scale).reshape(8, 64).backward(grad_out)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(clip.grad, clip_ref.grad)


def _ref_unbounded_grid(u: torch.Tensor, fmt: str) -> torch.Tensor:
    """Rounding without range limits; E2M1 continued by its next level, 8."""
    if fmt != "fp4":
        return torch.round(u)
    e2m1 = torch.from_numpy(ref_e2m1(u.numpy()).astype(np.float32))
    return torch.where(u.abs() >= 7, torch.sign(u) * 8, e2m1)  # 7 ties to 8 (even mantissa)


def test_bf16_input_gives_fp32_result_cast() -> None:
    x = gaussian(32, 128).bfloat16()
    for fmt in ALL_FORMATS:
        out = fake_quantize(x, fmt, 32)
        assert out.dtype == torch.bfloat16
        expected = fake_quantize(x.float(), fmt, 32).bfloat16()
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("fmt", "group", "expected"),
    [
        ("int4_sym", 32, 0.0094),
        ("int4_sym", 256, 0.0160),
        ("fp4", 32, 0.0102),
        ("fp4", 256, 0.0124),
    ],
)
def test_normalised_mse_on_gaussian_data(fmt: str, group: int, expected: float) -> None:
    x = gaussian(2**21)
    assert nmse(x, fake_quantize(x, fmt, group)) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_all_zero_group_gives_zeros(fmt: str) -> None:
    x = torch.zeros(2, 64)
    x[1, :32] = gaussian(32)
    x.requires_grad_()
    out = fake_quantize(x, fmt, 32)
    assert torch.equal(out[0], torch.zeros(64)) and torch.equal(out[1, 32:], torch.zeros(32))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_errors_name_the_bad_value() -> None:
    x = torch.zeros(4, 100)
    with pytest.raises(
        ValueError, match=r"'int3'.*int4, int4_sym, fp4, mxfp4, mxint4, nvfp4, nvint4, int8"
    ):
        fake_quantize(x, "int3", 10)
    with pytest.raises(ValueError, match=r"group size 48 .* 100 .*\(4, 100\)"):
        fake_quantize(x, "int4", 48)
    with pytest.raises(ValueError, match="positive int"):
        fake_quantize(x, "int4", 0)
    with pytest.raises(ValueError, match=r"clip has shape \(3,\), expected \(10,\)"):
        fake_quantize(x, "int4", 10, clip=torch.ones(3))


def test_nmse_and_kurtosis_against_numpy() -> None:
    x = gaussian(1000) ** 3
    x_hat = x + 0.1
    expected = np.sum((x_hat.numpy() - x.numpy()) ** 2) / np.sum(x.numpy() ** 2)
    assert nmse(x, x_hat) == pytest.approx(expected, rel=1e-5)
    xn = x.numpy().astype(np.float64)
    pearson = np.mean((xn - xn.mean()) ** 4) / np.var(xn) ** 2
    assert kurtosis(x) == pytest.approx(pearson, rel=1e-4)
    assert kurtosis(gaussian(2**20)) == pytest.approx(3.0, abs=0.05)  # Pearson, not excess
    assert kurtosis(x.bfloat16()) == pytest.approx(kurtosis(x.bfloat16().float()))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_compiled_matches_eager(fmt: str) -> None:
    x = gaussian(64, 256).bfloat16()
    compiled = torch.compile(fake_quantize, fullgraph=False)
    try:
        out = compiled(x, fmt, 32)
    except Exception as err:  # inductor needs a working C++ toolchain
        pytest.skip(f"torch.compile unusable on this machine: {type(err).__name__}: {err}")
    torch.testing.assert_close(out, fake_quantize(x, fmt, 32), rtol=0, atol=0)


# --- LSQ, LWC, the gradient through the AbsMax, per-tensor groups ---

RANGES = {"int4": (-8, 7), "int4_sym": (-7, 7), "fp4": (-6, 6)}


def ref_lsq(x: np.ndarray, step: np.ndarray, fmt: str, g: np.ndarray):
    """LSQ's forward and its paper's gradients (Esser et al. 2020, eq. 3 and the step's
    gradient scale 1 / sqrt(G qmax)), in float64 numpy; groups along the last axis."""
    qmin, qmax = RANGES[fmt]
    group = x.shape[-1] // step.shape[-1]
    xg = x.reshape(*step.shape, group)
    gg = g.reshape(xg.shape)
    s = step[..., None]
    v = xg / s
    clipped = np.clip(v, qmin, qmax)
    code = ref_e2m1(clipped).astype(np.float32) if fmt == "fp4" else np.round(clipped)
    inside = (v >= qmin) & (v <= qmax)
    d_step = np.where(inside, code - v, np.where(v < qmin, qmin, qmax))
    grad_step = (gg * d_step).sum(-1) / math.sqrt(group * qmax)
    return (code * s).reshape(x.shape), (gg * inside).reshape(x.shape), grad_step


@pytest.mark.parametrize("fmt", ["int4", "int4_sym", "fp4"])
@pytest.mark.parametrize("group", [8, 32])
def test_lsq_forward_and_gradients_match_the_paper(fmt: str, group: int) -> None:
    x = gaussian(16, 64, seed=1) * torch.logspace(-2, 1, 64, dtype=torch.float32)
    step = (lsq_init(x, FORMATS[fmt], group) * torch.linspace(0.3, 1.5, 64 // group)).detach()
    x.requires_grad_(True)
    step.requires_grad_(True)
    g = gaussian(16, 64, seed=2)
    out = lsq_quantize(x, step, FORMATS[fmt], group)
    out.backward(g)
    ref_out, ref_dx, ref_dstep = ref_lsq(x.detach().numpy(), step.detach().numpy(), fmt, g.numpy())
    np.testing.assert_array_equal(out.detach().numpy(), ref_out)
    np.testing.assert_allclose(x.grad.numpy(), ref_dx, rtol=1e-6)  # g / s * s: not exactly g
    np.testing.assert_array_equal(x.grad.numpy() == 0, ref_dx == 0)
    np.testing.assert_allclose(step.grad.numpy(), ref_dstep, rtol=1e-5, atol=1e-6)


def test_lsq_step_pushed_to_zero_or_below_quantizes_at_the_minimum_step() -> None:
    x = gaussian(4, 32)
    fmt = FORMATS["int4"]
    step = torch.tensor([[0.0, -0.3], [0.1, 1e-9], [0.2, 0.05], [-1.0, 0.4]])
    out = lsq_quantize(x, step, fmt, 16)
    assert torch.isfinite(out).all()
    floored = step.clamp_min(LSQ_MIN_STEP).numpy()
    ref_out, _, _ = ref_lsq(x.numpy(), floored, "int4", np.ones((4, 32), np.float32))
    np.testing.assert_array_equal(
        out.numpy(), ref_out
    )  # ordinary steps untouched, the rest floored


def test_lsq_init_is_twice_the_mean_magnitude_over_root_qmax() -> None:
    x = gaussian(4, 32)
    expected = 2 * np.abs(x.numpy().reshape(4, 2, 16)).mean(-1) / math.sqrt(7)
    np.testing.assert_allclose(lsq_init(x, FORMATS["int4"], 16).numpy(), expected, rtol=1e-6)
    assert lsq_init(x, FORMATS["int4"], "tensor").shape == (1, 1)


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-a))


def ref_lwc(x: np.ndarray, upper: np.ndarray, lower: np.ndarray, g: np.ndarray, bits: int = 4):
    """OmniQuant's LWC forward and the gradients autograd gives its code, derived by hand:
    the STE through the rounding, none through the rounded zero point, the step's gradient into
    the two logits and, through the max and min, into each group's extreme elements."""
    levels = 2**bits - 1
    group = x.shape[-1] // upper.shape[-1]
    xg = x.reshape(*upper.shape, group)
    gg = g.reshape(xg.shape)
    top, bottom = xg.max(-1, keepdims=True), xg.min(-1, keepdims=True)
    su, sl = sigmoid(upper)[..., None], sigmoid(lower)[..., None]
    raw = (top * su - bottom * sl) / levels
    h = np.clip(raw, 1e-5, 1e4)
    zero = np.round(np.clip(-bottom * sl / h, -1e4, 1e4))
    v = xg / h
    t = np.round(v) + zero
    inside = (t >= 0) & (t <= levels)
    q = np.clip(t, 0, levels)
    out = (q - zero) * h
    d_h = (gg * ((q - zero) - inside * v)).sum(-1, keepdims=True) * ((raw >= 1e-5) & (raw <= 1e4))
    d_top, d_bottom = d_h / levels, -d_h / levels
    grad_upper = (d_top * top * su * (1 - su))[..., 0]
    grad_lower = (d_bottom * bottom * sl * (1 - sl))[..., 0]
    is_top, is_bottom = xg == top, xg == bottom
    dx = gg * inside
    dx = dx + is_top / is_top.sum(-1, keepdims=True) * d_top * su
    dx = dx + is_bottom / is_bottom.sum(-1, keepdims=True) * d_bottom * sl
    return out.reshape(x.shape), dx.reshape(x.shape), grad_upper, grad_lower


@pytest.mark.parametrize("group", [16, "channel"])
def test_lwc_forward_and_gradients_match_omniquant(group: int | str) -> None:
    x = (gaussian(8, 64, seed=3) + 0.3).requires_grad_(True)  # asymmetric groups
    n = 64 // (64 if group == "channel" else group)
    upper = torch.linspace(1.0, 4.0, 8 * n, dtype=torch.float32).reshape(8, n).requires_grad_(True)
    lower = torch.linspace(4.0, 0.5, 8 * n, dtype=torch.float32).reshape(8, n).requires_grad_(True)
    g = gaussian(8, 64, seed=4)
    out = lwc_quantize(x, upper, lower, 4, group)
    out.backward(g)
    ref = ref_lwc(*(t.detach().numpy() for t in (x, upper, lower)), g.numpy())
    np.testing.assert_allclose(out.detach().numpy(), ref[0], rtol=1e-6, atol=1e-6)
    for got, expected in zip((x.grad, upper.grad, lower.grad), ref[1:], strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_lwc_without_clipping_rounds_to_sixteen_levels_over_the_range() -> None:
    x = gaussian(4, 32, seed=5)
    big = torch.full((4, 1), 30.0)  # sigmoid(30) = 1: no clipping
    out = lwc_quantize(x, big, big, 4, "channel")
    for row, x_row in zip(out, x, strict=True):
        step = (x_row.max() - x_row.min()) / 15
        assert len(torch.unique(row)) <= 16
        assert (row - x_row).abs().max() <= step / 2 * (1 + 1e-5)


def prefixquant_style(x: torch.Tensor, clip: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    """Plain autograd, as PrefixQuant's quantizer: scale from |x|'s max (with its gradient) times
    the factor, clamp(round_ste(x / s)) * s."""
    divisor, qmin, qmax = INT_SPECS[fmt]
    xg = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    scale = xg.abs().amax(-1, keepdim=True) / divisor * clip[:, None]
    u = xg / scale
    code = ((u.round() - u).detach() + u).clamp(qmin, qmax)
    return (code * scale).reshape(x.shape)


@pytest.mark.parametrize("fmt", ["int4", "int4_sym", "int8"])
def test_gradient_through_the_absmax_matches_plain_autograd(fmt: str) -> None:
    x = gaussian(6, 32, seed=6)
    x[0, :8] = 1.5  # a tied maximum: torch's amax shares its gradient
    clip = torch.tensor([0.9, 1.1, 0.7, 1.0], dtype=torch.float32)
    g = gaussian(6, 32, seed=7)
    ours_x, ours_c = x.clone().requires_grad_(True), clip.clone().requires_grad_(True)
    ref_x, ref_c = x.clone().requires_grad_(True), clip.clone().requires_grad_(True)
    out = fake_quantize(ours_x, fmt, 8, ours_c, absmax_grad=True)
    out.backward(g)
    expected = prefixquant_style(ref_x, ref_c, fmt, 8)
    expected.backward(g)
    assert torch.equal(out, expected)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_c.grad, ref_c.grad, rtol=1e-5, atol=1e-6)
    plain_x = x.clone().requires_grad_(True)
    fake_quantize(plain_x, fmt, 8, clip).backward(g)
    assert not torch.equal(plain_x.grad, ours_x.grad)  # the AbsMax term is what differs


@pytest.mark.parametrize("fmt", ["int4", "fp4", "int8"])
def test_tensor_group_is_one_scale_for_the_whole_tensor(fmt: str) -> None:
    x = gaussian(2, 8, 64, seed=8).float() * torch.logspace(-2, 2, 64)
    expected = ref_fake_quantize(x.numpy().reshape(1, -1), fmt, x.numel()).reshape(x.shape)
    np.testing.assert_array_equal(fake_quantize(x, fmt, "tensor").numpy(), expected)


def test_per_tensor_layers_learn_one_factor_or_one_step() -> None:
    act = ActQuantizer("int4", "tensor", 64, "lac")
    linear = QuantLinear(64, 16, "int4", "tensor", weight_quantizer="lsq")
    linear.reset_quantizer()
    assert act.clip_logit.shape == (1,) and linear.lsq_step.shape == (1, 1)
    linear(act(gaussian(4, 64).float())).square().sum().backward()
    assert act.clip_logit.grad.abs().item() > 0 and linear.lsq_step.grad.abs().item() > 0


def test_weight_quantizer_parameters_have_the_groups_shape() -> None:
    lsq = QuantLinear(64, 16, "int4", 16, weight_quantizer="lsq")
    lwc = QuantLinear(64, 16, "int4", "channel", weight_quantizer="lwc")
    lsq.reset_quantizer()
    torch.testing.assert_close(lsq.lsq_step, lsq_init(lsq.weight, FORMATS["int4"], 16))
    assert lsq.lsq_step.shape == (16, 4)
    assert lwc.lwc_upper.shape == lwc.lwc_lower.shape == (16, 1)
    assert torch.all(lwc.lwc_upper == 4.0)  # OmniQuant's initial logit


@pytest.mark.parametrize(("param", "init", "start"), [("sigmoid", 1.0, 1.0), ("raw", 0.9, 0.9)])
def test_lac_parametrisations_start_at_their_initial_factor(
    param: str, init: float, start: float
) -> None:
    act = ActQuantizer("int4", 16, 64, "lac", lac_param=param, lac_init=init)
    torch.testing.assert_close(act.clip_factor(), torch.full((4,), start))
    if param == "sigmoid":
        assert torch.equal(act.clip_logit, torch.zeros(4))  # exactly 2 sigmoid(0) = 1
    other = ActQuantizer("int4", 16, 64, "lac", lac_init=0.5)
    torch.testing.assert_close(other.clip_factor(), torch.full((4,), 0.5))
