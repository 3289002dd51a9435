"""Precision schemes: which linear sites get quantized, to what, and the modules that do it.

Sites per block: ``qkv`` (input of q, k, v), ``o`` (input of o_proj), ``fc1`` (input of
gate/up) and ``fc2`` (input of down_proj). An input read by several linears is quantized once,
by one shared activation quantizer per site, as a real low-precision kernel would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qat_sweep.model.precision import GroupSize, QuantConfig
from qat_sweep.model.quantizers import FORMATS, fake_quantize, resolve_group_size


class QuantLinear(nn.Linear):
    """Bias-free linear whose weight is fake-quantized per output row, in groups along the input."""

    def __init__(self, in_features: int, out_features: int, fmt: str, group_size: GroupSize):
        super().__init__(in_features, out_features, bias=False)
        resolve_group_size(group_size, (out_features, in_features))
        self.fmt = fmt
        self.group_size = group_size

    def quantized_weight(self) -> Tensor:
        return fake_quantize(self.weight, self.fmt, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fmt={self.fmt}, group_size={self.group_size}"


class ActQuantizer(nn.Module):
    """Per-token, group-wise fake quantizer of one site's input (AbsMax or LAC).

    LAC (ours, after OmniQuant/PrefixQuant): a clipping factor per group position, shared
    across tokens, multiplies the AbsMax scale. It is parameterised as ``2 * sigmoid(theta)``
    with theta = 0, so it starts at exactly 1.0 (plain AbsMax), stays in (0, 2) and has its
    steepest gradient at the start; it learns through the LSQ-style STE gradient (rounding
    error pulls the factor down, clipped values push it back up).
    """

    def __init__(self, fmt: str, group_size: GroupSize, dim: int, method: str):
        super().__init__()
        if method not in ("absmax", "lac"):
            raise ValueError(f"unknown activation quantizer {method!r}; allowed: absmax, lac")
        self.fmt = fmt
        self.group_size = group_size
        self.method = method
        n_groups = dim // resolve_group_size(group_size, (dim,))
        self.clip_logit = nn.Parameter(torch.zeros(n_groups)) if method == "lac" else None

    def clip_factor(self) -> Tensor | None:
        return None if self.clip_logit is None else 2 * torch.sigmoid(self.clip_logit)

    def forward(self, x: Tensor) -> Tensor:
        return fake_quantize(x, self.fmt, self.group_size, clip=self.clip_factor())

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, group_size={self.group_size}, method={self.method}"


def make_linear(
    in_features: int, out_features: int, fmt: str | None, group_size: GroupSize
) -> nn.Linear:
    """A plain bias-free nn.Linear when ``fmt`` is None (no quantization code in the path)."""
    if fmt is None:
        return nn.Linear(in_features, out_features, bias=False)
    return QuantLinear(in_features, out_features, fmt, group_size)


def make_act_quantizer(quant: QuantConfig | None, site: str, dim: int) -> nn.Module:
    """The site's shared input quantizer, or nn.Identity when the input stays unquantized."""
    fmt = None if quant is None else quant.site_formats(site)[1]
    if fmt is None:
        return nn.Identity()
    return ActQuantizer(fmt, quant.group_size, dim, quant.resolved_act_quantizer)


def format_bits(fmt: str | None) -> int:
    """Bits of a format; 16 stands for an unquantized (BF16/fp32) tensor."""
    return 16 if fmt is None else FORMATS[fmt].bits
