"""Block scales of the MX and NV formats (docs/formats.md), in the arithmetic of the reference.

Each function takes fp32 blocks ``(..., n_blocks, block)`` and returns the scaled values ``u``
that are then clamped and rounded to the element grid (``quantizers.round_to_grid``), the
multiplier that decodes a code back (``code * decode``) and the scale as stored (E8M0 bits or
the E4M3 value). The operations and their order are torchao 0.18's (``mx_tensor.to_mx`` /
``to_dtype``, ``nvfp4_tensor.nvfp4_quantize`` / ``NVFP4Tensor.dequantize``): where it multiplies
by a reciprocal, so do we, because ``x * (1 / s)`` and ``x / s`` differ in the last bit and
then round to different codes. Two documented departures: ``rceil`` rounds up exactly, as the
hardware cast does, where torchao's CPU path takes ``ceil(log2(.))``; an all-zero NV tensor
gives zeros where torchao divides 0 by 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

E8M0_BIAS = 127
F32_MIN_NORMAL = 2.0**-126
E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0**-6  # torchao clamps block scales here: E4M3 subnormals are never used
_MANTISSA_BITS = 23


class BlockScaled(NamedTuple):
    u: Tensor  # x divided by its block's scale, before clamping and rounding
    decode: Tensor  # code * decode = the dequantized value, broadcast over each block
    stored: Tensor  # the scale as stored: E8M0 exponent byte (uint8) or the E4M3 value (fp32)


def _exponent_bits(x: Tensor) -> Tensor:
    """The biased fp32 exponent field of non-negative ``x`` (0 for zero and subnormals)."""
    return torch.bitwise_right_shift(x.view(torch.int32), _MANTISSA_BITS) & 0xFF


def e8m0_floor(amax: Tensor, emax: int) -> Tensor:
    """OCP MX v1.0: X = 2^(floor(log2 amax) - emax), as a biased E8M0 exponent (int32).

    floor(log2) is the exponent field itself (a subnormal or zero amax counts as 2^-127), and
    the result is clamped to E8M0's range [2^-127, 2^128] as torchao does.
    """
    unbiased = _exponent_bits(amax) - E8M0_BIAS - emax
    return torch.clamp(unbiased, -E8M0_BIAS, E8M0_BIAS + 1) + E8M0_BIAS


def e8m0_rceil(amax: Tensor, elem_max: float) -> Tensor:
    """amax / elem_max rounded up to a power of two (NVIDIA's cvt.rp.satfinite.ue8m0), biased.

    Exact: the exponent field, plus one where the mantissa is not zero; a subnormal descale
    rounds up to 2^-127 or 2^-126. torchao's CPU path computes ceil(log2(.)) instead, whose
    fp32 log2 rounds a few descales per million just above a power of two down to it.
    """
    descale = amax / elem_max
    bits = descale.view(torch.int32)
    exponent = _exponent_bits(descale)
    mantissa = bits & ((1 << _MANTISSA_BITS) - 1)
    normal = exponent + (mantissa != 0).int()
    subnormal = (descale > 2.0**-127).int()  # (0, 2^-127] -> 2^-127, above -> 2^-126
    biased = torch.where(exponent > 0, normal, subnormal)
    return torch.clamp(biased, 0, 2 * E8M0_BIAS)


def _e8m0_value(biased: Tensor) -> Tensor:
    """2^(biased - 127) in fp32 (code 0 is the subnormal 2^-127)."""
    return torch.exp2(biased.float() - E8M0_BIAS)


def mx_scaled(blocks: Tensor, emax: int, elem_max: float, rounding: str) -> BlockScaled:
    """One E8M0 scale per block from its AbsMax; ``rounding`` is 'floor' or 'rceil'.

    floor (torchao FLOOR): divide by the scale, clamped below at the smallest normal fp32 as
    torchao does (so a block under 2^-124 encodes against 2^-126 and decodes at 2^-127).
    rceil (torchao RCEIL): multiply by 2^(127 - e), and by 1 for the code-0 scale.
    """
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    if rounding == "floor":
        biased = e8m0_floor(amax, emax)
        u = blocks / torch.clamp(_e8m0_value(biased), min=F32_MIN_NORMAL)
    elif rounding == "rceil":
        biased = e8m0_rceil(amax, elem_max)
        reciprocal = torch.where(biased == 0, 1.0, torch.exp2(E8M0_BIAS - biased.float()))
        u = blocks * reciprocal
    else:
        raise ValueError(f"unknown E8M0 scale rounding {rounding!r}; allowed: floor, rceil")
    return BlockScaled(u, _e8m0_value(biased), biased.to(torch.uint8))


def nv_scaled(blocks: Tensor, elem_max: float) -> BlockScaled:
    """Two-level NV scaling: a per-tensor FP32 scale amax / (448 * elem_max) over the whole
    tensor, and per block amax_block / elem_max divided by it, rounded to E4M3 (clamped to
    [2^-6, 448]); x is multiplied by (1 / tensor scale) / block scale, as torchao does.

    The tensor scale of an all-zero tensor is taken as 1 (zeros, not 0/0 = NaN), and a zero
    element stays zero where an fp32-subnormal tensor scale overflows the reciprocal.
    """
    tensor_amax = blocks.abs().amax()
    tensor_scale = torch.where(tensor_amax > 0, tensor_amax / (E4M3_MAX * elem_max), 1.0)
    block_scale = blocks.abs().amax(dim=-1, keepdim=True) / elem_max / tensor_scale
    stored = torch.clamp(block_scale, E4M3_MIN_NORMAL, E4M3_MAX).to(torch.float8_e4m3fn).float()
    reciprocal = (1.0 / tensor_scale) / stored
    u = torch.where(blocks == 0, 0.0, blocks * reciprocal)
    return BlockScaled(u, tensor_scale * stored, stored)
