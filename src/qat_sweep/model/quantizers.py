"""Group-wise fake quantization with a straight-through estimator (docs/science.md, quantizers;
the MX/NV block formats: docs/formats.md).

All scale and rounding math runs in fp32 whatever the input dtype (a bf16 scale measurably hurts
and torch.compile may drop bf16 casts); the result is cast back to the input dtype. Groups are
contiguous runs of G elements along the last (reduction) dimension; a block format's group is
its block.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qat_sweep.model.mx_formats import mx_scaled, nv_scaled
from qat_sweep.model.precision import BLOCK_FORMATS, GroupSize


@dataclass(frozen=True)
class QuantFormat:
    """A symmetric format: scale = absmax / divisor, codes clamped to [qmin, qmax].

    ``clip_margin`` is half the gap to the next level an unbounded grid would have (0.5 for
    integers, 1 for E2M1, whose next level would be 8). A scaled value that rounds (ties to
    even) to a code outside [qmin, qmax] on that unbounded grid had its code clipped, and the
    STE passes no gradient there: ``code_in_range``.
    """

    name: str
    bits: int
    divisor: float
    qmin: float
    qmax: float
    floating: bool  # True: E2M1 grid, False: integer grid
    clip_margin: float
    # Block formats only: the fixed block, its scale (e8m0 | e4m3), the E8M0 rounding, and
    # emax, floor(log2) of the largest element (E2M1: 6 -> 2, INT4: 7 -> 2): the OCP MX rule's
    # emax_elem, so a floor scale puts a block's AbsMax in [4, 8) before clamping.
    block: int | None = None
    scale: str = "absmax"
    scale_rounding: str = "floor"
    emax: int = 0


def _block_format(name: str, floating: bool) -> QuantFormat:
    """An MX/NV format: E2M1 or symmetric INT4 elements under the block scale of precision's
    BLOCK_FORMATS; ``divisor`` is the element maximum the scale maps a block's AbsMax to."""
    top = 6.0 if floating else 7.0
    encoding = BLOCK_FORMATS[name]
    margin = 1.0 if floating else 0.5
    emax = int(top).bit_length() - 1
    return QuantFormat(
        name, 4, top, -top, top, floating, margin, encoding.block, encoding.scale, emax=emax
    )


FORMATS: dict[str, QuantFormat] = {
    # Paper convention: s = absmax/8 so the positive extreme (code 8) is clipped to 7.
    "int4": QuantFormat("int4", 4, 8.0, -8.0, 7.0, floating=False, clip_margin=0.5),
    # The authors' later code: s = absmax/7, codes [-7, 7], exactly symmetric.
    "int4_sym": QuantFormat("int4_sym", 4, 7.0, -7.0, 7.0, floating=False, clip_margin=0.5),
    # E2M1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}, s = absmax/6; the next level would be 8.
    "fp4": QuantFormat("fp4", 4, 6.0, -6.0, 6.0, floating=True, clip_margin=1.0),
    # MX and NV block formats (docs/formats.md): E2M1 or symmetric INT4 under 8-bit block scales.
    **{name: _block_format(name, enc.element == "e2m1") for name, enc in BLOCK_FORMATS.items()},
    # Ours for the FC2-input variant: symmetric INT8, s = absmax/127, codes [-127, 127].
    "int8": QuantFormat("int8", 8, 127.0, -127.0, 127.0, floating=False, clip_margin=0.5),
    # The paper's INT4 rule at 8 bits: s = absmax/128, codes [-128, 127].
    "int8_full": QuantFormat("int8_full", 8, 128.0, -128.0, 127.0, floating=False, clip_margin=0.5),
}
LWC_INIT = 4.0  # OmniQuant's initial clipping logits: sigmoid(4) = 0.982 of the max and min
LWC_MIN_STEP, LWC_MAX_STEP = 1e-5, 1e4  # OmniQuant's clamp of the step (CLIPMIN)
LSQ_MIN_STEP = LWC_MIN_STEP  # a learned LSQ step an update pushed to <= 0 quantizes at this


def get_format(
    fmt: str | QuantFormat, scale_rounding: str | None = None, int4_range: str | None = None
) -> QuantFormat:
    """The QuantFormat called ``fmt`` with a block format's optional settings applied (None:
    the default, floor and symmetric); ValueError naming a bad value and the allowed ones."""
    if isinstance(fmt, QuantFormat):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; allowed: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    if scale_rounding is not None:
        if spec.scale != "e8m0" or scale_rounding not in ("floor", "rceil"):
            raise ValueError(
                f"scale_rounding {scale_rounding!r} with format {fmt}: allowed: floor or rceil "
                "for formats with E8M0 scales, None otherwise"
            )
        spec = dataclasses.replace(spec, scale_rounding=scale_rounding)
    if int4_range is not None:
        if spec.block is None or spec.floating or int4_range not in ("symmetric", "full"):
            raise ValueError(
                f"int4_range {int4_range!r} with format {fmt}: allowed: symmetric or full for "
                "mxint4 and nvint4, None otherwise"
            )
        spec = dataclasses.replace(spec, qmin=-8.0 if int4_range == "full" else -7.0)
    return spec


def resolve_group_size(group_size: GroupSize, shape: torch.Size | tuple[int, ...]) -> int:
    """The number of elements per group for a tensor of ``shape`` (None/'channel': whole row;
    'tensor' is ``grouped``'s and ``fake_quantize``'s, never a row's)."""
    dim = shape[-1] if len(shape) else 0
    if group_size is None or group_size == "channel":
        return dim
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(
            f"group size must be a positive int, 'channel' or None, got {group_size!r}"
        )
    if dim % group_size:
        divisors = [g for g in range(1, dim + 1) if dim % g == 0]
        raise ValueError(
            f"group size {group_size} does not divide the last dimension {dim} of a tensor of "
            f"shape {tuple(shape)}; allowed: 'channel' or one of {divisors}"
        )
    return group_size


def code_in_range(u: Tensor, fmt: QuantFormat) -> Tensor:
    """True where ``u`` rounds, ties to even, to a code inside [qmin, qmax] on the unbounded grid.

    Ties are exact: int4 sends 7.5 to 8 (clipped) but -8.5 to -8 (kept); int4_sym sends +-7.5
    to +-8, int8 +-127.5 to +-128; E2M1 sends |u| = 7, midway between 6 and 8, to the even
    mantissa, 8. Those codes were clipped, so their gradient is zero.
    """
    if fmt.floating:
        return u.abs() < fmt.qmax + fmt.clip_margin
    rounded = torch.round(u)
    return (rounded >= fmt.qmin) & (rounded <= fmt.qmax)


def round_to_grid(u: Tensor, fmt: QuantFormat) -> Tensor:
    """Rounds already clamped, scaled values to the format's codes (ties to even)."""
    if not fmt.floating:
        return torch.round(u)
    magnitude = u.abs()
    # E2M1 spacing is 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; dividing by a power of two is
    # exact, and torch.round's ties-to-even then matches the even-mantissa rule in every binade.
    step = torch.where(magnitude < 2, 0.5, torch.where(magnitude < 4, 1.0, 2.0))
    return torch.sign(u) * torch.round(magnitude / step) * step


class _FakeQuantize(torch.autograd.Function):
    """x -> s * code(x / s). STE: identity gradient, zero where the code was clipped.

    "Clipped" means x / s rounds to a code outside the range (OmniQuant's clamp(round_ste(u))),
    not merely that x / s exceeds qmax: otherwise fp32 rounding of absmax / divisor would
    randomly cut the gradient of each group's largest element. An optional clipping factor
    (LAC, one per group position) multiplies the scale and gets the LSQ/OmniQuant gradient
    d x_hat / d s = code - u inside the range and code where clipped. The AbsMax is a constant
    for autograd unless ``absmax_grad``: then d x_hat / d s also flows through the scale into
    each group's largest |x| (shared among ties, as torch's amax does), as plain autograd of
    PrefixQuant's quantizer would.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, clip: Tensor | None, fmt: QuantFormat, group_size: int, absmax_grad: bool
    ) -> Tensor:
        shape = x.shape
        xg = x.float().reshape(*shape[:-1], shape[-1] // group_size, group_size)
        factor = None
        if fmt.block is not None:
            u, scale = block_scaled(xg, fmt)[:2]
        else:
            absmax = xg.abs().amax(dim=-1, keepdim=True)
            base_scale = absmax / fmt.divisor
            factor = clip.float().unsqueeze(-1) if clip is not None else None
            scale = base_scale * factor if factor is not None else base_scale
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            u = xg / safe
        inside = code_in_range(u, fmt)
        code = round_to_grid(u.clamp(fmt.qmin, fmt.qmax), fmt)
        out = (code * scale).reshape(shape).to(x.dtype)
        saved = [inside]
        ctx.clip_grad = clip is not None and ctx.needs_input_grad[1]
        ctx.absmax_grad = absmax_grad and ctx.needs_input_grad[0]
        if ctx.clip_grad or ctx.absmax_grad:
            saved.append(code - u * inside)  # d x_hat / d scale
        if ctx.clip_grad:
            saved.append(base_scale)
        if ctx.absmax_grad:
            peak = xg.abs() == absmax
            share = torch.sign(xg) * peak / peak.sum(dim=-1, keepdim=True)
            saved.append(share * ((factor if factor is not None else 1.0) / fmt.divisor))
        ctx.save_for_backward(*saved)
        ctx.shape = shape
        ctx.dtype = x.dtype
        ctx.clip_dtype = clip.dtype if clip is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        inside, *rest = ctx.saved_tensors
        g = grad_out.float().reshape(inside.shape)
        grad_x = g * inside if ctx.needs_input_grad[0] else None
        grad_clip = None
        if rest:
            d_scale = rest.pop(0)
            per_scale = (g * d_scale).sum(dim=-1, keepdim=True)  # d loss / d scale, per group
            if ctx.clip_grad:
                per_group = per_scale * rest.pop(0)
                grad_clip = per_group.reshape(-1, per_group.shape[-2]).sum(0)
                grad_clip = grad_clip.to(ctx.clip_dtype)
            if ctx.absmax_grad:
                grad_x = grad_x + per_scale * rest.pop(0)
        if grad_x is not None:
            grad_x = grad_x.reshape(ctx.shape).to(ctx.dtype)
        return grad_x, grad_clip, None, None, None


class _RoundSTE(torch.autograd.Function):
    """The format's rounding in the forward, the identity in the backward (round_ste)."""

    @staticmethod
    def forward(ctx, u: Tensor, fmt: QuantFormat) -> Tensor:
        return round_to_grid(u, fmt)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _GradScale(torch.autograd.Function):
    """The identity in the forward; the gradient times ``factor`` (LSQ's step gradient scale)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def grouped(x: Tensor, group_size: GroupSize) -> Tensor:
    """``x`` in fp32 as ``(..., n_groups, G)``: groups of G along the last dimension, one group
    per row (None, 'channel'), or the whole tensor as one group ('tensor': shape (1, 1, numel))."""
    if group_size == "tensor":
        return x.float().reshape(1, 1, -1)
    g = resolve_group_size(group_size, x.shape)
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // g, g)


def lsq_quantize(x: Tensor, step: Tensor, fmt: QuantFormat, group_size: GroupSize) -> Tensor:
    """LSQ (Esser et al. 2020): x_hat = step * round(clamp(x / step, qmin, qmax)) on the format's
    grid, with one learned step per group (``step`` has the groups' shape, ``grouped(x)`` less
    its last axis). The gradient is the paper's: the identity for x inside [qmin, qmax], zero
    outside; for the step, round(u) - u inside and qmin or qmax outside, scaled by
    1 / sqrt(G qmax) (G: the elements that share a step). A step that an update pushed to 0 or
    below is used at LSQ_MIN_STEP (as OmniQuant clamps its step), never as a division by 0 or a
    sign flip of every code."""
    xg = grouped(x, group_size)
    positive = step.float().clamp_min(LSQ_MIN_STEP)
    scaled = _GradScale.apply(positive, 1.0 / math.sqrt(xg.shape[-1] * fmt.qmax))
    s = scaled.unsqueeze(-1)
    code = _RoundSTE.apply((xg / s).clamp(fmt.qmin, fmt.qmax), fmt)
    return (code * s).reshape(x.shape).to(x.dtype)


def lsq_init(x: Tensor, fmt: QuantFormat, group_size: GroupSize) -> Tensor:
    """LSQ's initial step per group: 2 mean|x| / sqrt(qmax)."""
    return 2 * grouped(x.detach(), group_size).abs().mean(-1) / math.sqrt(fmt.qmax)


def lwc_quantize(
    x: Tensor, upper: Tensor, lower: Tensor, bits: int, group_size: GroupSize
) -> Tensor:
    """LWC (OmniQuant, Shao et al. 2024): an asymmetric grid of 2^bits levels between
    sigmoid(upper) x max and sigmoid(lower) x min of each group, with a zero point.

    As OmniQuant's code: step h = (max' - min') / (2^bits - 1) clamped to [1e-5, 1e4], zero
    point z = round(-min' / h) without gradient, x_hat = (clamp(round_ste(x / h) + z, 0,
    2^bits - 1) - z) h; autograd carries the gradient into the logits and, through the max
    and min, into each group's extreme elements.
    """
    xg = grouped(x, group_size)
    levels = 2**bits - 1
    high = xg.amax(-1, keepdim=True) * torch.sigmoid(upper.float()).unsqueeze(-1)
    low = xg.amin(-1, keepdim=True) * torch.sigmoid(lower.float()).unsqueeze(-1)
    h = ((high - low) / levels).clamp(LWC_MIN_STEP, LWC_MAX_STEP)
    zero = (-low / h).clamp(-1e4, 1e4).round().detach()
    code = (_RoundSTE.apply(xg / h, FORMATS["int8"]) + zero).clamp(0, levels)
    return ((code - zero) * h).reshape(x.shape).to(x.dtype)


def block_scaled(xg: Tensor, fmt: QuantFormat):
    """(u, decode, stored scale) of fp32 blocks ``(..., n_blocks, block)`` of a block format."""
    if fmt.scale == "e8m0":
        return mx_scaled(xg, fmt.emax, fmt.divisor, fmt.scale_rounding)
    return nv_scaled(xg, fmt.divisor)


def block_encode(x: Tensor, fmt: str | QuantFormat) -> tuple[Tensor, Tensor, Tensor]:
    """(codes, stored scales, decode multipliers) of a block format: codes are the element
    values (E2M1 or INT4) per element, scales one per block (E8M0 byte or E4M3 value).
    What the fake quantizer computes, laid open for comparison with a reference."""
    spec = get_format(fmt)
    if spec.block is None:
        raise ValueError(f"{spec.name} is not a block format; allowed: {', '.join(BLOCK_FORMATS)}")
    xg = x.float().reshape(*x.shape[:-1], x.shape[-1] // spec.block, spec.block)
    u, decode, stored = block_scaled(xg, spec)
    codes = round_to_grid(u.clamp(spec.qmin, spec.qmax), spec)
    return codes.reshape(x.shape), stored.squeeze(-1), decode.squeeze(-1)


def fake_quantize(
    x: Tensor,
    fmt: str | QuantFormat,
    group_size: GroupSize,
    clip: Tensor | None = None,
    absmax_grad: bool = False,
) -> Tensor:
    """Quantize-dequantize ``x`` in groups of ``group_size`` along its last dimension.

    ``group_size`` None or 'channel' means one group over the whole last dimension, 'tensor'
    one group over the whole tensor; a block format (``get_format`` applies its settings)
    takes None or its block. ``clip`` (optional, shape ``(n_groups,)``) multiplies each group
    position's AbsMax scale; ``absmax_grad`` passes the gradient through the AbsMax.
    """
    spec = get_format(fmt)
    if spec.block is not None:
        if group_size not in (None, spec.block) or clip is not None or absmax_grad:
            raise ValueError(
                f"format {spec.name} quantizes in its blocks of {spec.block} with their own "
                f"scales; got group_size {group_size!r}"
                + (" and a clip factor" if clip is not None else "")
                + (" and absmax_grad" if absmax_grad else "")
                + f"; allowed: group_size None or {spec.block}, no clip, no absmax_grad"
            )
        group_size = spec.block
    if group_size == "tensor":
        flat = x.reshape(1, -1)
        return fake_quantize(flat, spec, None, clip, absmax_grad).reshape(x.shape)
    g = resolve_group_size(group_size, x.shape)
    if clip is not None and tuple(clip.shape) != (x.shape[-1] // g,):
        raise ValueError(
            f"clip has shape {tuple(clip.shape)}, expected ({x.shape[-1] // g},) for groups of "
            f"{g} over a last dimension of {x.shape[-1]}"
        )
    return _FakeQuantize.apply(x, clip, spec, g, absmax_grad)


def nmse(x: Tensor, x_hat: Tensor) -> float:
    """Normalised squared error ||x_hat - x||^2 / ||x||^2 in fp32 (0 when both are zero, inf
    when only x is). Not the analysis' mean absolute relative error of delta."""
    xf = x.detach().float()
    err = (x_hat.detach().float() - xf).square().sum()
    ref = xf.square().sum()
    if ref == 0:
        return 0.0 if err == 0 else float("inf")
    return float(err / ref)


def kurtosis(x: Tensor) -> float:
    """Pearson kurtosis E[(x-mu)^4] / var^2 over all elements, in fp32 (3 for a Gaussian).

    Not the excess kurtosis: the paper's FC2-input figures (123 in BF16) are on this scale.
    NaN for a constant tensor.
    """
    xf = x.detach().float().flatten()
    centred = xf - xf.mean()
    var = centred.square().mean()
    if var == 0:
        return float("nan")
    return float(centred.pow(4).mean() / var.square())
