"""fake_quantize against an independent numpy reference, plus its numerical invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qat_sweep.model.quantizers import fake_quantize, kurtosis, nmse

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
