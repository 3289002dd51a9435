"""The MX/NV block formats: bit-exact to torchao 0.18's reference, element by element, and
their own rules (E2M1 ties, zero blocks, INT4 variants, STE, torch.compile without breaks).

torchao is the independent reference for mxfp4 (to_mx / to_dtype, FLOOR and RCEIL) and nvfp4
(nvfp4_quantize with a per-tensor scale, decoded as NVFP4Tensor.dequantize does); mxint4 and
nvint4 have no reference there and are checked against a float64 numpy transcription of the
rules in docs/formats.md. scripts/check-formats prints the same comparison as a table.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from qat_sweep.model.mx_formats import e8m0_rceil
from qat_sweep.model.quantizers import block_encode, fake_quantize, get_format

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

E2M1 = torch.float4_e2m1fn_x2
ROWS, COLS = 64, 512


def inputs(kind: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """The input kinds of the comparison: everyday, heavy-tailed and the edges of the scales."""
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(ROWS, COLS, generator=generator)
    if kind == "normal":
        x = normal
    elif kind == "student_t3":
        chi2 = torch.randn(3, ROWS, COLS, generator=generator).square().sum(0)
        x = normal / (chi2 / 3).sqrt()
    elif kind == "zeros":
        x = torch.zeros(ROWS, COLS)
    elif kind == "tiny":  # block AbsMax near 2^-126: E8M0's lowest codes, NV's subnormal scale
        x = normal * 1e-38
    elif kind == "huge":  # near the top of fp32/bf16
        x = normal * 1e37
    elif kind == "wide":  # blocks from 1e-8 to 1e8: NV block scales clamp at E4M3's 2^-6
        exponents = torch.rand(ROWS, COLS // 16, 1, generator=generator) * 16 - 8
        x = (normal.reshape(ROWS, COLS // 16, 16) * 10**exponents).reshape(ROWS, COLS)
    else:
        raise ValueError(kind)
    return x.to(dtype)


KINDS = ("normal", "student_t3", "zeros", "tiny", "huge", "wide")
DTYPES = (torch.float32, torch.bfloat16)


def torchao_mxfp4(x: torch.Tensor, rounding: str):
    """(E8M0 bytes, element values, decoded) from torchao's to_mx / to_dtype."""
    mode = getattr(ScaleCalculationMode, rounding.upper())
    scale, packed = mx_tensor.to_mx(x, E2M1, 32, scaling_mode=mode)
    decoded = mx_tensor.to_dtype(packed, scale, E2M1, 32, x.dtype)
    codes = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(x.shape)
    return scale.view(torch.uint8), codes, decoded


def torchao_nvfp4(x: torch.Tensor):
    """(E4M3 block scales, element values, decoded) from torchao's nvfp4_quantize with the
    per-tensor scale amax / (448 * 6), decoded as NVFP4Tensor.dequantize does."""
    tensor_scale = per_tensor_amax_to_scale(x.abs().max())
    scale, packed = nvfp4_quantize(x, 16, tensor_scale)
    codes = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(x.shape)
    blocks = codes.reshape(x.shape[0], -1, 16) * (tensor_scale * scale.float()).unsqueeze(-1)
    return scale.float(), codes, blocks.reshape(x.shape).to(x.dtype)


def mismatches(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Where two tensors differ (NaN equals NaN; -0 equals +0)."""
    return ~((ours == reference) | (ours.isnan() & reference.isnan()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rounding", ["floor", "rceil"])
def test_mxfp4_bit_exact_to_torchao(rounding: str, dtype: torch.dtype, kind: str) -> None:
    x = inputs(kind, dtype)
    ref_scale, ref_codes, ref_out = torchao_mxfp4(x, rounding)
    spec = get_format("mxfp4", scale_rounding=rounding)
    codes, scale, _ = block_encode(x, spec)
    out = fake_quantize(x, spec, None)
    assert out.dtype == dtype
    assert torch.equal(scale, ref_scale)
    assert not mismatches(codes, ref_codes).any()
    assert not mismatches(out, ref_out).any()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_nvfp4_bit_exact_to_torchao(dtype: torch.dtype, kind: str) -> None:
    x = inputs(kind, dtype)
    ref_scale, ref_codes, ref_out = torchao_nvfp4(x)
    codes, scale, _ = block_encode(x, "nvfp4")
    out = fake_quantize(x, "nvfp4", None)
    if kind == "zeros":
        # torchao's per-tensor scale is 0 and 0 / 0 makes every scale NaN; ours gives zeros.
        assert ref_scale.isnan().all() and ref_out.isnan().all()
        assert torch.equal(out, torch.zeros_like(x)) and not scale.isnan().any()
        return
    assert torch.equal(scale, ref_scale)
    differ = mismatches(out, ref_out) | mismatches(codes, ref_codes)
    # bf16 flushes some tiny values to 0; with a subnormal per-tensor scale torchao multiplies
    # them by an infinite reciprocal (NaN); we keep a zero a zero. Nowhere else may they differ.
    assert not (differ & (x != 0)).any()
    assert torch.equal(out[x == 0], torch.zeros_like(out[x == 0]))
    assert differ.any() == (kind == "tiny" and dtype == torch.bfloat16)


def test_rceil_rounds_up_exactly_where_torchao_cpu_log2_does_not() -> None:
    """NVIDIA's cast rounds amax / 6 up to a power of two exactly; torchao's CPU fallback takes
    ceil(log2(.)) in fp32, which maps a few descales per million just above 2^k down to 2^k."""
    mantissas = torch.arange(1, 1 << 23, dtype=torch.int32)
    descale = ((100 + 127) << 23 | mantissas).view(torch.float32)  # (2^100, 2^101)
    theirs, _ = mx_tensor._to_mx_rceil(torch.zeros(1), descale, 1.0)
    ours = e8m0_rceil(descale, 1.0)
    assert (ours == 101 + 127).all()  # every one of them rounds up to 2^101
    differ = ours != theirs.int()
    assert 0 < int(differ.sum()) < 100 and (theirs[differ].int() == 100 + 127).all()


# The E2M1 rounding rule in the scaled domain (scale 1: the block's AbsMax 7.5 is in [4, 8)).
E2M1_CASES = [
    (0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0),
    (5.5, 6.0), (6.5, 6.0), (7.0, 6.0), (7.5, 6.0), (0.1, 0.0), (2.25, 2.0), (4.5, 4.0),
]  # fmt: skip


@pytest.mark.parametrize("rounding", ["floor", "rceil"])
def test_e2m1_round_to_nearest_even_and_saturation(rounding: str) -> None:
    values = torch.tensor([u for u, _ in E2M1_CASES])
    expected = torch.tensor([c for _, c in E2M1_CASES])
    block = torch.zeros(2, 32)
    block[0, : len(values)], block[1, : len(values)] = values, -values
    spec = get_format("mxfp4", scale_rounding=rounding)
    codes, scale, decode = block_encode(block, spec)
    if rounding == "floor":  # 2^(floor(log2 7.5) - 2) = 1
        assert scale.tolist() == [[127], [127]] and decode.tolist() == [[1.0], [1.0]]
        assert torch.equal(codes[0, : len(values)], expected)
        assert torch.equal(codes[1, : len(values)], -expected)
    else:  # 7.5 / 6 rounds up to 2: everything halves first
        assert scale.tolist() == [[128], [128]]
    assert torch.equal(codes, torchao_mxfp4(block, rounding)[1])


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxint4", "nvint4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_all_zero_blocks_give_zeros_and_finite_gradients(fmt: str, dtype: torch.dtype) -> None:
    x = torch.zeros(3, 64, dtype=dtype)
    x[1, :16] = torch.randn(16).to(dtype)
    x.requires_grad_()
    out = fake_quantize(x, fmt, None)
    out.float().sum().backward()
    assert torch.equal(out[0], torch.zeros(64, dtype=dtype)) and not out.isnan().any()
    assert torch.equal(out[1, 32:], torch.zeros(32, dtype=dtype))
    assert torch.isfinite(x.grad).all()
    assert not fake_quantize(torch.zeros(2, 64, dtype=dtype), fmt, None).isnan().any()


# ---------------------------------------------------------------- INT4 elements (no torchao)


def _rne(u: np.ndarray) -> np.ndarray:
    return np.round(u)  # numpy rounds half to even


def ref_int4(x: np.ndarray, fmt: str, rounding: str, qmin: int) -> np.ndarray:
    """mxint4 / nvint4 from docs/formats.md, in float64 except where fp32 is the rule."""
    block = 32 if fmt == "mxint4" else 16
    xf = x.astype(np.float32).reshape(x.shape[0], -1, block)
    amax = np.abs(xf).max(-1, keepdims=True)
    if fmt == "mxint4":
        # E8M0: 2^(floor(log2 amax) - 2) (floor) or amax / 7 rounded up to a power of two
        exp = np.array([math.frexp(float(a))[1] - 1 if a > 0 else -127 for a in amax.flat])
        if rounding == "rceil":
            exp = np.array([math.ceil(math.log2(float(a) / 7)) if a > 0 else -127
                            for a in amax.astype(np.float64).flat])  # fmt: skip
        else:
            exp = exp - 2
        scale = np.exp2(np.clip(exp, -127, 127)).reshape(amax.shape)
        u = xf.astype(np.float64) / scale
        return (np.clip(_rne(u), qmin, 7) * scale).reshape(x.shape)
    tensor_scale = np.float32(np.abs(xf).max()) / np.float32(448 * 7)
    block_scale = (amax / np.float32(7)) / tensor_scale
    block_scale = np.clip(block_scale, 2.0**-6, 448).astype(np.float32)
    e4m3 = torch.from_numpy(block_scale).to(torch.float8_e4m3fn).float().numpy()
    u = xf * ((np.float32(1) / tensor_scale) / e4m3)  # NV multiplies by a reciprocal
    return (np.clip(_rne(u), qmin, 7) * (tensor_scale * e4m3)).reshape(x.shape)


@pytest.mark.parametrize("kind", ["normal", "student_t3", "wide", "huge"])
@pytest.mark.parametrize(
    ("fmt", "rounding", "int4_range", "qmin"),
    [
        ("mxint4", None, None, -7),
        ("mxint4", "rceil", None, -7),
        ("mxint4", None, "full", -8),
        ("nvint4", None, None, -7),
        ("nvint4", None, "full", -8),
    ],
)
def test_int4_block_formats_match_reference(fmt, rounding, int4_range, qmin, kind) -> None:
    x = inputs(kind, torch.float32)
    spec = get_format(fmt, rounding, int4_range)
    out = fake_quantize(x, spec, None).double().numpy()
    expected = ref_int4(x.numpy(), fmt, rounding or "floor", qmin)
    np.testing.assert_array_equal(out, expected.astype(np.float32).astype(np.float64))
    codes = block_encode(x, spec)[0]
    assert codes.min() >= qmin and codes.max() <= 7 and torch.equal(codes, codes.round())


def test_int4_full_range_reaches_minus_8_only_on_the_negative_side() -> None:
    x = torch.zeros(1, 32)
    x[0, :2] = torch.tensor([-7.75, 7.75])  # AbsMax 7.75: floor scale 1
    full = fake_quantize(x, get_format("mxint4", int4_range="full"), None)
    symmetric = fake_quantize(x, "mxint4", None)
    assert full[0, :2].tolist() == [-8.0, 7.0] and symmetric[0, :2].tolist() == [-7.0, 7.0]


def test_nvint4_full_range_changes_nothing() -> None:
    """E4M3 rounds a block scale by at most 1/16, so |x| / scale <= 7 x 17/16 < 7.5: no value
    reaches -8 under an NV scale (it does under MX's power-of-two scale, above)."""
    x = inputs("student_t3", torch.float32)
    full = fake_quantize(x, get_format("nvint4", int4_range="full"), None)
    assert torch.equal(full, fake_quantize(x, "nvint4", None))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint4"])
def test_ste_zero_gradient_where_saturated(fmt: str) -> None:
    """A floor scale leaves a block's AbsMax in [4, 8) x scale: from 7 (E2M1, midway to the
    next level 8) or 7.5 (INT4) up the code was clipped, and the STE passes no gradient."""
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([7.9, 6.9, 7.4, -7.6])
    x.requires_grad_()
    fake_quantize(x, fmt, None).sum().backward()
    passes = [0.0, 1.0, 0.0, 0.0] if fmt == "mxfp4" else [0.0, 1.0, 1.0, 0.0]
    assert x.grad[0, :4].tolist() == passes and (x.grad[0, 4:] == 1).all()


def test_block_formats_refuse_other_groups_and_clip() -> None:
    x = torch.randn(2, 64)
    assert torch.equal(fake_quantize(x, "mxfp4", 32), fake_quantize(x, "mxfp4", None))
    with pytest.raises(ValueError, match=r"mxfp4 .* blocks of 32 .* group_size 16"):
        fake_quantize(x, "mxfp4", 16)
    with pytest.raises(ValueError, match="clip factor"):
        fake_quantize(x, "nvfp4", None, clip=torch.ones(4))
    with pytest.raises(ValueError, match=r"scale_rounding 'rceil' with format nvfp4"):
        get_format("nvfp4", scale_rounding="rceil")
    with pytest.raises(ValueError, match=r"int4_range 'full' with format mxfp4"):
        get_format("mxfp4", int4_range="full")


def test_block_formats_trace_without_graph_breaks() -> None:
    """fullgraph=True: one graph for every block format, forward and backward, same numbers."""
    specs = [
        get_format("mxfp4"),
        get_format("mxfp4", scale_rounding="rceil"),
        get_format("nvfp4"),
        get_format("mxint4", int4_range="full"),
        get_format("nvint4"),
    ]

    def quantize_all(x: torch.Tensor) -> list[torch.Tensor]:
        return [fake_quantize(x, spec, None) for spec in specs]

    compiled = torch.compile(quantize_all, fullgraph=True)
    x = inputs("student_t3", torch.bfloat16)[:8].requires_grad_()
    outs = compiled(x)
    sum(o.float().sum() for o in outs).backward()
    for spec, out in zip(specs, outs, strict=True):
        assert torch.equal(out, fake_quantize(x.detach(), spec, None)), spec
    assert torch.isfinite(x.grad).all()
