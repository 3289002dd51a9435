"""Precision schemes: which linear sites get quantized, to what, and the modules that do it.

Sites per block: ``qkv`` (input of q, k, v), ``o`` (input of o_proj), ``fc1`` (input of
gate/up) and ``fc2`` (input of down_proj). An input read by several linears is quantized once,
by one shared activation quantizer per site, as a real low-precision kernel would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from qat_sweep.presets import plain_dict
from qat_sweep.quantize import FORMATS, GroupSize, fake_quantize, resolve_group_size

SITES: tuple[str, ...] = ("qkv", "o", "fc1", "fc2")
WEIGHT_FORMATS: tuple[str, ...] = ("int4", "int4_sym", "fp4")  # the 4-bit formats of a scheme
ACT_QUANTIZERS: tuple[str, ...] = ("auto", "absmax", "lac")
LAC_MIN_GROUP = 256  # paper: AbsMax for G < 256, LAC for G >= 256 and per-token


@dataclass(frozen=True)
class SitePrecision:
    """Bits of one site's weights and input: 16 = not quantized, 4 = ``format``, 8 = ``fc2_format``."""

    weight_bits: int
    act_bits: int


def _scheme(w: int, a: int, fc2_a: int | None = None) -> dict[str, SitePrecision]:
    return {s: SitePrecision(w, fc2_a if s == "fc2" and fc2_a else a) for s in SITES}


SCHEMES: dict[str, dict[str, SitePrecision]] = {
    "bf16": _scheme(16, 16),
    "w4a4": _scheme(4, 4),
    "w4a16": _scheme(4, 16),
    "w16a4": _scheme(16, 4),
    "w4a4_fc2a8": _scheme(4, 4, fc2_a=8),
    "w16a4_fc2a8": _scheme(16, 4, fc2_a=8),
}


@dataclass(frozen=True)
class QuantConfig:
    """One precision setting: scheme, 4-bit format, group size and activation quantizer."""

    scheme: str
    format: str = "int4"
    group_size: GroupSize = 128
    act_quantizer: str = "auto"
    fc2_format: str = "int8"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; allowed: {', '.join(SCHEMES)}")
        if self.scheme == "bf16":
            if self.format != "bf16" or self.group_size is not None:
                raise ValueError(
                    f"scheme bf16 takes format bf16 and group_size null, got format "
                    f"{self.format!r} and group_size {self.group_size!r}"
                )
        else:
            if self.format not in WEIGHT_FORMATS:
                raise ValueError(
                    f"unknown format {self.format!r} for scheme {self.scheme}; allowed: "
                    f"{', '.join(WEIGHT_FORMATS)}"
                )
            group = self.group_size
            if group != "channel" and (
                isinstance(group, bool) or not isinstance(group, int) or group <= 0
            ):
                raise ValueError(f"group_size must be a positive int or 'channel', got {group!r}")
        if self.act_quantizer not in ACT_QUANTIZERS:
            raise ValueError(
                f"unknown act_quantizer {self.act_quantizer!r}; allowed: {', '.join(ACT_QUANTIZERS)}"
            )
        if self.fc2_format not in FORMATS:
            raise ValueError(
                f"unknown fc2_format {self.fc2_format!r}; allowed: {', '.join(FORMATS)}"
            )

    @property
    def resolved_act_quantizer(self) -> str:
        """'absmax' or 'lac'; 'auto' follows the paper (LAC for G >= 256 and per-token)."""
        if self.act_quantizer != "auto":
            return self.act_quantizer
        if self.group_size == "channel":
            return "lac"
        return "lac" if int(self.group_size or 0) >= LAC_MIN_GROUP else "absmax"

    def site_formats(self, site: str) -> tuple[str | None, str | None]:
        """(weight format, input format) of a site; None where it stays in high precision."""
        precision = SCHEMES[self.scheme][site]
        return self._format_for(precision.weight_bits), self._format_for(precision.act_bits)

    def _format_for(self, bits: int) -> str | None:
        return {16: None, 4: self.format, 8: self.fc2_format}[bits]


def quant_config_from(cfg_node: DictConfig | Mapping[str, Any]) -> QuantConfig:
    """Builds a QuantConfig from a Hydra ``quant`` node or dict; unknown keys are errors."""
    data = plain_dict(cfg_node)
    fields = {f.name for f in dataclasses.fields(QuantConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"quant config: unknown keys {unknown}; allowed: {sorted(fields)}")
    return QuantConfig(**data)


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
