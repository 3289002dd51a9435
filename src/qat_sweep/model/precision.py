"""Precision settings without torch: the schemes, the format names and the one QuantConfig
that plan (torch-free) and the trainer both build, so both refuse exactly the same settings.

The numerics of each format live in ``quantize``; the modules that apply a scheme in ``schemes``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

from omegaconf import DictConfig

from qat_sweep.model.presets import ModelConfig, plain_dict

GroupSize = int | str | None

SITES: tuple[str, ...] = ("qkv", "o", "fc1", "fc2")
WEIGHT_FORMATS: tuple[str, ...] = ("int4", "int4_sym", "fp4")  # the 4-bit formats of a scheme
FORMAT_NAMES: tuple[str, ...] = (*WEIGHT_FORMATS, "int8")  # = quantize.FORMATS (held by a test)
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
        if self.fc2_format not in FORMAT_NAMES:
            raise ValueError(
                f"unknown fc2_format {self.fc2_format!r}; allowed: {', '.join(FORMAT_NAMES)}"
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


def reduction_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) weight shape of every block linear, keyed by its module name."""
    d, f, kv = cfg.hidden_size, cfg.ffn_size, cfg.kv_dim
    shapes = {"attn.q": (d, d), "attn.k": (kv, d), "attn.v": (kv, d), "attn.o": (d, d)}
    shapes |= {"mlp.gate": (f, d), "mlp.up": (f, d), "mlp.down": (d, f)}
    return {f"blocks.{i}.{name}": s for i in range(cfg.n_layers) for name, s in shapes.items()}


def allowed_group_sizes(cfg: ModelConfig) -> list[int | str]:
    """Integer G values dividing every reduction dim of the preset, plus 'channel'."""
    common = reduce(math.gcd, {shape[1] for shape in reduction_dims(cfg).values()})
    return [g for g in range(2, common + 1) if common % g == 0] + ["channel"]


def check_group_size(cfg: ModelConfig, quant: QuantConfig) -> None:
    """ValueError unless the quantized scheme's G divides every block linear's input."""
    if quant.scheme == "bf16" or quant.group_size == "channel":
        return
    for name, (out_dim, in_dim) in reduction_dims(cfg).items():
        if in_dim % int(quant.group_size or 0):
            raise ValueError(
                f"group size {quant.group_size} does not divide the reduction dim of {name} "
                f"(weight shape ({out_dim}, {in_dim})) in model {cfg.name!r}; allowed: "
                f"{', '.join(map(str, allowed_group_sizes(cfg)))}"
            )
