"""Precision settings without torch: the schemes, the format names and the one QuantConfig
that plan (torch-free) and the trainer both build, so both refuse exactly the same settings.

The numerics of each format live in ``quantizers`` and ``mx_formats``; the modules that apply a
scheme in ``layers``; the user-facing description of the formats in docs/formats.md.
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


@dataclass(frozen=True)
class BlockEncoding:
    """A format whose block is part of it: elements share one 8-bit scale per ``block``.

    ``scale`` is E8M0 (a power of two, the OCP MX formats) or E4M3 (NVIDIA's NV formats, under
    a per-tensor FP32 scale of ``tensor_scale_bits``); ``element`` is the 4-bit grid.
    """

    block: int
    scale: str  # "e8m0" | "e4m3"
    element: str  # "e2m1" | "int4"
    scale_bits: int = 8
    tensor_scale_bits: int = 0

    @property
    def power_of_two_scale(self) -> bool:
        return self.scale == "e8m0"


BLOCK_FORMATS: dict[str, BlockEncoding] = {
    "mxfp4": BlockEncoding(32, "e8m0", "e2m1"),
    "mxint4": BlockEncoding(32, "e8m0", "int4"),
    "nvfp4": BlockEncoding(16, "e4m3", "e2m1", tensor_scale_bits=32),
    "nvint4": BlockEncoding(16, "e4m3", "int4", tensor_scale_bits=32),
}
GROUP_FORMATS: tuple[str, ...] = ("int4", "int4_sym", "fp4")  # fp32 AbsMax scale per group of G
WEIGHT_FORMATS: tuple[str, ...] = (*GROUP_FORMATS, *BLOCK_FORMATS)  # the 4-bit formats
FORMAT_NAMES: tuple[str, ...] = (*WEIGHT_FORMATS, "int8", "int8_full")  # = quantizers.FORMATS
ACT_QUANTIZERS: tuple[str, ...] = ("auto", "absmax", "lac")
# Weight quantizers (the paper's Fig. 14): AbsMax (the paper's), LSQ (a learned step per group,
# Esser et al. 2020), LWC (learned upper and lower clipping factors, OmniQuant).
WEIGHT_QUANTIZERS: tuple[str, ...] = ("absmax", "lsq", "lwc")
LSQ_FORMATS: tuple[str, ...] = GROUP_FORMATS  # a learned step on the format's own grid
LWC_FORMATS: tuple[str, ...] = ("int4",)  # OmniQuant's asymmetric grid of 2^4 levels
LAC_MIN_GROUP = 256  # paper, Section 4.1: AbsMax for G < 256, LAC for G >= 256 and per-token
LAC_PARAMS: tuple[str, ...] = ("sigmoid", "raw")  # 2 sigmoid(theta) | the factor (PrefixQuant)
GROUP_WORDS: tuple[str, ...] = ("channel", "tensor")  # one group per row/token | per tensor
SCALE_ROUNDINGS: tuple[str, ...] = ("floor", "rceil")  # E8M0: OCP MX v1.0 rule | NVIDIA's cast
INT4_RANGES: tuple[str, ...] = ("symmetric", "full")  # [-7, 7] (default) | [-8, 7]
ROTATIONS: tuple[str, ...] = ("none", "hadamard")
# Settings added after the first sweeps ran, with the values that mean "not used": a run leaves
# them out of its identity at these values, so the run_keys of earlier runs do not move.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "scale_rounding": None,
    "int4_range": None,
    "rotation": "none",
    "rotation_block": None,
    "rotation_seed": None,
    "weight_quantizer": "absmax",
    "lac_min_group": LAC_MIN_GROUP,
    "lac_param": "sigmoid",
    "lac_init": 1.0,
    "absmax_grad": False,
}
# Storage of the scale of a per-group format in bits per weight (decide's memory budget).
GROUP_SCALE_BITS = 16  # one BF16 scale per group


def is_power_of_two(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value > 0
        and not value & (value - 1)
    )


def bits_per_weight(fmt: str, group: float, scale_bits: float = GROUP_SCALE_BITS) -> float:
    """Storage of a 4-bit format: 4 + scale bits / G, with a block format's own 8-bit scale per
    block (MX: 4 + 8/32, NV: 4 + 8/16). NV's per-tensor FP32 scale adds 32 / (elements of the
    tensor), under 1e-4 bits per weight for any layer of a real model: left out."""
    if fmt in BLOCK_FORMATS:
        encoding = BLOCK_FORMATS[fmt]
        return 4 + encoding.scale_bits / encoding.block
    return 4 + scale_bits / group


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
    """One precision setting: scheme, 4-bit format, group size, activation quantizer and the
    optional block-format and rotation settings (docs/formats.md)."""

    scheme: str
    format: str = "int4"
    group_size: GroupSize = 128
    act_quantizer: str = "auto"
    fc2_format: str = "int8"
    scale_rounding: str | None = None  # E8M0 formats: null = floor (OCP MX v1.0) | rceil
    int4_range: str | None = None  # mxint4/nvint4: null = symmetric | full
    rotation: str = "none"  # none | hadamard
    rotation_block: int | None = None  # null = the group (the format's block, or G)
    rotation_seed: int | None = None  # null = no random sign flip
    weight_quantizer: str = "absmax"  # absmax | lsq | lwc (WEIGHT_QUANTIZERS)
    lac_min_group: int = LAC_MIN_GROUP  # auto: LAC from this G up (and per channel, per tensor)
    lac_param: str = "sigmoid"  # sigmoid: factor = 2 sigmoid(theta) | raw: the factor itself
    lac_init: float = 1.0  # LAC's initial factor (PrefixQuant's code: raw, 0.9)
    absmax_grad: bool = False  # true: gradient flows through the AbsMax into the scale

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
            self._check_group()
        if self.act_quantizer not in ACT_QUANTIZERS:
            raise ValueError(
                f"unknown act_quantizer {self.act_quantizer!r}; allowed: {', '.join(ACT_QUANTIZERS)}"
            )
        if self.fc2_format not in FORMAT_NAMES:
            raise ValueError(
                f"unknown fc2_format {self.fc2_format!r}; allowed: {', '.join(FORMAT_NAMES)}"
            )
        if self.act_quantizer == "lac" and self.block is not None:
            raise ValueError(
                f"quant.act_quantizer='lac' with format {self.format}: LAC multiplies the scale "
                f"by a learned factor, but {self.format} derives its "
                f"{BLOCK_FORMATS[self.format].scale.upper()} scale from the block's AbsMax; "
                "allowed: auto or absmax"
            )
        self._check_encoding()
        self._check_rotation()
        self._check_learned()

    def _check_group(self) -> None:
        group = self.group_size
        block = self.block
        if block is not None:
            if group is not None and group != block:
                raise ValueError(
                    f"quant.group_size={group!r} with format {self.format}: its block of {block} "
                    f"is part of the format; allowed: null or {block}"
                )
            return
        if group not in GROUP_WORDS and (
            isinstance(group, bool) or not isinstance(group, int) or group <= 0
        ):
            raise ValueError(
                f"group_size must be a positive int, 'channel' or 'tensor', got {group!r}"
            )

    def _check_encoding(self) -> None:
        encoding = BLOCK_FORMATS.get(self.format)
        if self.scale_rounding is not None:
            if self.scale_rounding not in SCALE_ROUNDINGS:
                raise ValueError(
                    f"unknown quant.scale_rounding {self.scale_rounding!r}; allowed: null, "
                    f"{', '.join(SCALE_ROUNDINGS)}"
                )
            if encoding is None or not encoding.power_of_two_scale:
                pow2 = [f for f, e in BLOCK_FORMATS.items() if e.power_of_two_scale]
                raise ValueError(
                    f"quant.scale_rounding={self.scale_rounding!r} with format {self.format}: "
                    f"only formats with power-of-two (E8M0) scales round their scale "
                    f"({', '.join(pow2)}); allowed: null"
                )
        if self.int4_range is not None:
            if self.int4_range not in INT4_RANGES:
                raise ValueError(
                    f"unknown quant.int4_range {self.int4_range!r}; allowed: null, "
                    f"{', '.join(INT4_RANGES)}"
                )
            if encoding is None or encoding.element != "int4":
                ints = [f for f, e in BLOCK_FORMATS.items() if e.element == "int4"]
                raise ValueError(
                    f"quant.int4_range={self.int4_range!r} with format {self.format}: only "
                    f"{', '.join(ints)} choose their INT4 range (int4 is [-8, 7], int4_sym "
                    "[-7, 7]); allowed: null"
                )

    def _check_rotation(self) -> None:
        if self.rotation not in ROTATIONS:
            raise ValueError(
                f"unknown quant.rotation {self.rotation!r}; allowed: {', '.join(ROTATIONS)}"
            )
        if self.rotation == "none":
            extra = {"rotation_block": self.rotation_block, "rotation_seed": self.rotation_seed}
            for key, value in extra.items():
                if value is not None:
                    raise ValueError(
                        f"quant.{key}={value!r} with rotation none has no effect; "
                        "allowed: null, or set quant.rotation=hadamard"
                    )
            return
        if self.scheme == "bf16":
            raise ValueError(
                "quant.rotation=hadamard with scheme bf16: nothing is quantized, so the "
                "rotation is an identity that only costs time; allowed: none"
            )
        block = self.rotation_block
        if block is not None and not (is_power_of_two(block) and block >= 2):
            raise ValueError(
                f"quant.rotation_block={block!r}: a Hadamard block is a power of two >= 2 "
                "(e.g. 16, 32, 128); allowed: null (the group) or a power of two"
            )
        if block is None and not is_power_of_two(self.group):
            raise ValueError(
                f"quant.rotation=hadamard with quant.rotation_block null rotates within each "
                f"group, but the group {self.group_size!r} is not a power of two; allowed: "
                "a power-of-two group_size, or set quant.rotation_block"
            )
        seed = self.rotation_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(
                f"quant.rotation_seed={seed!r}: allowed: null (no sign flip) or an int >= 0"
            )

    def _check_learned(self) -> None:
        """The weight quantizer, LAC's settings and the AbsMax gradient, each against the format."""
        for key, value, allowed in (
            ("weight_quantizer", self.weight_quantizer, WEIGHT_QUANTIZERS),
            ("lac_param", self.lac_param, LAC_PARAMS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown quant.{key} {value!r}; allowed: {', '.join(allowed)}")
        formats = {"lsq": LSQ_FORMATS, "lwc": LWC_FORMATS}.get(self.weight_quantizer)
        if formats and self.scheme != "bf16" and self.format not in formats:
            raise ValueError(
                f"quant.weight_quantizer={self.weight_quantizer} with format {self.format}: "
                f"allowed formats: {', '.join(formats)} (a block format's scale is its own)"
            )
        min_group = self.lac_min_group
        if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
            raise ValueError(f"quant.lac_min_group={min_group!r}: allowed: a whole number >= 1")
        init, high = self.lac_init, 2.0 if self.lac_param == "sigmoid" else math.inf
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not 0 < init < high:
            raise ValueError(
                f"quant.lac_init={init!r} with lac_param {self.lac_param}: allowed: a number in "
                + ("(0, 2), the range of 2 sigmoid(theta)" if high < math.inf else "(0, inf)")
            )
        if self.absmax_grad and self.block is not None:
            raise ValueError(
                f"quant.absmax_grad=true with format {self.format}: its "
                f"{BLOCK_FORMATS[self.format].scale.upper()} scale is rounded from the AbsMax "
                "and passes no gradient; allowed: false"
            )

    @property
    def block(self) -> int | None:
        """The block of a fixed-block format (MX/NV), None for a per-group format."""
        encoding = BLOCK_FORMATS.get(self.format)
        return encoding.block if encoding else None

    @property
    def group(self) -> GroupSize:
        """The group the quantizers use: the format's block, else ``group_size``."""
        return self.block if self.block is not None else self.group_size

    @property
    def resolved_rotation_block(self) -> int | None:
        """The Hadamard block, None without rotation (null block: the group)."""
        if self.rotation == "none":
            return None
        return self.rotation_block if self.rotation_block is not None else int(self.group)

    @property
    def label(self) -> str:
        """The format as the analysis keys it: the name plus any non-default encoding and the
        rotation, e.g. ``mxfp4-rceil-had``; runs that differ here are different settings."""
        return format_label(self.format, self.scale_rounding, self.int4_range,
                            self.rotation, self.rotation_block, self.rotation_seed) + (
            quantizer_suffix(dataclasses.asdict(self)))  # fmt: skip

    @property
    def resolved_act_quantizer(self) -> str:
        """'absmax' or 'lac'; 'auto' follows the paper (LAC for G >= 256 and per-token)."""
        if self.act_quantizer != "auto":
            return self.act_quantizer
        return paper_act_quantizer(self.group, self.lac_min_group)

    def site_formats(self, site: str) -> tuple[str | None, str | None]:
        """(weight format, input format) of a site; None where it stays in high precision."""
        precision = SCHEMES[self.scheme][site]
        return self._format_for(precision.weight_bits), self._format_for(precision.act_bits)

    def _format_for(self, bits: int) -> str | None:
        return {16: None, 4: self.format, 8: self.fc2_format}[bits]


def format_label(
    fmt: str,
    scale_rounding: str | None = None,
    int4_range: str | None = None,
    rotation: str = "none",
    rotation_block: int | None = None,
    rotation_seed: int | None = None,
) -> str:
    """``fmt`` plus what sets a run of it apart: ``-rceil``, ``-full``, ``-had`` (Hadamard
    within each group), ``-had64`` (in blocks of 64), ``-had64s3`` (sign flips of seed 3).
    Defaults add nothing (floor and symmetric are the defaults), so a label names one setting."""
    label = fmt
    if scale_rounding == "rceil":
        label += "-rceil"
    if int4_range == "full":
        label += "-full"
    if rotation == "hadamard":
        label += "-had" + (str(rotation_block) if rotation_block is not None else "")
        label += f"s{rotation_seed}" if rotation_seed is not None else ""
    return label


def paper_act_quantizer(group: GroupSize, lac_min_group: int = LAC_MIN_GROUP) -> str:
    """The paper's activation quantizer for a group: LAC from ``lac_min_group`` up, per channel
    and per tensor; AbsMax below."""
    if group in GROUP_WORDS:
        return "lac"
    return "lac" if int(group or 0) >= lac_min_group else "absmax"


def quantizer_suffix(quant: Mapping[str, Any]) -> str:
    """What sets a run's quantizers apart from the paper's, for its label: ``-lsq``, ``-lwc``
    (weight quantizer), ``-absmax``/``-lac`` (an activation quantizer other than the paper's
    rule picks), ``-lacmin257``, ``-lacraw``, ``-lac0.9`` (LAC's threshold, parametrisation,
    start), ``-ag`` (gradient through the AbsMax). The paper's choices add nothing."""
    suffix = ""
    if quant.get("weight_quantizer", "absmax") != "absmax":
        suffix += f"-{quant['weight_quantizer']}"
    min_group = quant.get("lac_min_group", LAC_MIN_GROUP)
    fmt = quant.get("format")
    group = BLOCK_FORMATS[fmt].block if fmt in BLOCK_FORMATS else quant.get("group_size")
    chosen = quant.get("act_quantizer", "auto")
    readable = group in GROUP_WORDS or (isinstance(group, int) and isinstance(min_group, int))
    if chosen != "auto" and readable and chosen != paper_act_quantizer(group, min_group):
        suffix += f"-{chosen}"
    if min_group != LAC_MIN_GROUP:
        suffix += f"-lacmin{quant['lac_min_group']}"
    if quant.get("lac_param", "sigmoid") != "sigmoid":
        suffix += f"-lac{quant['lac_param']}"
    if float(quant.get("lac_init", 1.0)) != 1.0:
        suffix += f"-lac{float(quant['lac_init']):g}"
    return suffix + ("-ag" if quant.get("absmax_grad") else "")


def base_format(label: str) -> str:
    """The format name of a label (``mxfp4-had`` -> ``mxfp4``)."""
    return label.split("-", 1)[0]


def quant_identity(quant: Mapping[str, Any]) -> dict[str, Any]:
    """A quant config as a run's identity sees it: the optional settings at their "not used"
    values (or a block format's own defaults, floor and symmetric) are left out, so runs that
    predate them keep their run_keys, and a block format's G written as its block is null:
    one computation, one key."""
    fmt = quant.get("format")
    own: dict[str, Any] = {}
    identity = dict(quant)
    if fmt in BLOCK_FORMATS:
        own = {"scale_rounding": "floor", "int4_range": "symmetric"}
        if identity.get("group_size") == BLOCK_FORMATS[fmt].block:
            identity["group_size"] = None
    return {
        k: v
        for k, v in identity.items()
        if not (k in OPTIONAL_DEFAULTS and (v == OPTIONAL_DEFAULTS[k] or own.get(k, object()) == v))
    }


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
    """Integer G values dividing every reduction dim of the preset, plus channel and tensor."""
    common = reduce(math.gcd, {shape[1] for shape in reduction_dims(cfg).values()})
    return [g for g in range(2, common + 1) if common % g == 0] + list(GROUP_WORDS)


def check_group_size(cfg: ModelConfig, quant: QuantConfig) -> None:
    """ValueError unless the quantized scheme's G (a block format's block) and the Hadamard
    block divide every block linear's input."""
    if quant.scheme == "bf16":
        return
    rotation = quant.resolved_rotation_block
    for name, (out_dim, in_dim) in reduction_dims(cfg).items():
        if quant.group not in GROUP_WORDS and in_dim % int(quant.group or 0):
            allowed = ", ".join(map(str, allowed_group_sizes(cfg)))
            if quant.block:
                allowed = f"a format whose block divides it, or group_size one of {allowed}"
            raise ValueError(
                f"{f'the {quant.format} block' if quant.block else 'group size'} {quant.group} "
                f"does not divide the reduction dim of {name} (weight shape ({out_dim}, "
                f"{in_dim})) in model {cfg.name!r}; allowed: {allowed}"
            )
        if rotation is not None and in_dim % rotation:
            powers = [g for g in allowed_group_sizes(cfg) if is_power_of_two(g)]
            raise ValueError(
                f"quant.rotation_block={rotation} does not divide the reduction dim of {name} "
                f"(weight shape ({out_dim}, {in_dim})) in model {cfg.name!r}; allowed: "
                f"{', '.join(map(str, powers))}"
            )
