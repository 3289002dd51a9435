"""Precision schemes: which linear sites get quantized, to what, and the modules that do it.

Sites per block: ``qkv`` (input of q, k, v), ``o`` (input of o_proj), ``fc1`` (input of
gate/up) and ``fc2`` (input of down_proj). An input read by several linears is quantized once,
by one shared activation quantizer per site, as a real low-precision kernel would. With a
rotation, a site's input and its linears' weight rows are rotated by the same orthogonal
matrix (one module per site, shared), so the product is unchanged before quantization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qat_sweep.model.precision import GroupSize, QuantConfig
from qat_sweep.model.quantizers import QuantFormat, fake_quantize, get_format, resolve_group_size
from qat_sweep.model.rotation import HadamardRotation


class QuantLinear(nn.Linear):
    """Bias-free linear whose weight is fake-quantized per output row, in groups along the
    input, after the site's rotation of its rows (``fmt`` None: rotated, not quantized)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: str | QuantFormat | None,
        group_size: GroupSize,
        rotation: HadamardRotation | None = None,
    ):
        super().__init__(in_features, out_features, bias=False)
        self.spec = None if fmt is None else get_format(fmt)
        if self.spec is not None:
            resolve_group_size(self.spec.block or group_size, (out_features, in_features))
        self.fmt = None if self.spec is None else self.spec.name
        self.group_size = group_size
        self.rotation = rotation
        self.quantizing = True  # off: the plain linear (the BF16 phase, see set_quantizing)

    def rotated_weight(self) -> Tensor:
        """The weight in the site's rotated basis (the weight itself without rotation)."""
        return self.weight if self.rotation is None else self.rotation(self.weight)

    def quantized_weight(self) -> Tensor:
        """The weight the product uses: rotated, then fake-quantized."""
        weight = self.rotated_weight()
        return weight if self.spec is None else fake_quantize(weight, self.spec, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight() if self.quantizing else self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fmt={self.fmt}, group_size={self.group_size}"


class ActQuantizer(nn.Module):
    """Per-token, group-wise fake quantizer of one site's input (AbsMax or LAC), applied after
    the site's rotation when there is one.

    LAC (ours, after OmniQuant/PrefixQuant): a clipping factor per group position, shared
    across tokens, multiplies the AbsMax scale. It is parameterised as ``2 * sigmoid(theta)``
    with theta = 0, so it starts at exactly 1.0 (plain AbsMax), stays in (0, 2) and has its
    steepest gradient at the start; it learns through the LSQ-style STE gradient (rounding
    error pulls the factor down, clipped values push it back up). With a rotation, the groups
    LAC clips are groups of the rotated input.
    """

    def __init__(
        self,
        fmt: str | QuantFormat,
        group_size: GroupSize,
        dim: int,
        method: str,
        rotation: HadamardRotation | None = None,
    ):
        super().__init__()
        if method not in ("absmax", "lac"):
            raise ValueError(f"unknown activation quantizer {method!r}; allowed: absmax, lac")
        self.spec = get_format(fmt)
        self.fmt = self.spec.name
        self.group_size = group_size
        self.method = method
        self.rotation = rotation
        n_groups = dim // resolve_group_size(self.spec.block or group_size, (dim,))
        self.clip_logit = nn.Parameter(torch.zeros(n_groups)) if method == "lac" else None
        self.quantizing = True

    def clip_factor(self) -> Tensor | None:
        return None if self.clip_logit is None else 2 * torch.sigmoid(self.clip_logit)

    def rotate(self, x: Tensor) -> Tensor:
        """What is quantized: the rotated input in fp32, or the input itself."""
        return x if self.rotation is None else self.rotation.rotate(x)

    def forward(self, x: Tensor) -> Tensor:
        if not self.quantizing:
            return x
        quantized = fake_quantize(self.rotate(x), self.spec, self.group_size, self.clip_factor())
        return quantized.to(x.dtype)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, group_size={self.group_size}, method={self.method}"


def site_spec(quant: QuantConfig, fmt: str | None) -> QuantFormat | None:
    """The numerics of one of a scheme's formats: the 4-bit one with the config's block-format
    settings (scale rounding, INT4 range), the 8-bit FC2 one as it is."""
    if fmt is None:
        return None
    if fmt == quant.format:
        return get_format(fmt, quant.scale_rounding, quant.int4_range)
    return get_format(fmt)


def make_rotation(quant: QuantConfig | None, dim: int) -> HadamardRotation | None:
    """The rotation of a site whose reduction dimension is ``dim`` (None: not rotated)."""
    block = None if quant is None else quant.resolved_rotation_block
    return None if block is None else HadamardRotation(dim, block, quant.rotation_seed)


def make_linear(
    in_features: int,
    out_features: int,
    fmt: str | QuantFormat | None,
    group_size: GroupSize,
    rotation: HadamardRotation | None = None,
) -> nn.Linear:
    """A plain bias-free nn.Linear when neither quantized nor rotated (no extra code in the path)."""
    if fmt is None and rotation is None:
        return nn.Linear(in_features, out_features, bias=False)
    return QuantLinear(in_features, out_features, fmt, group_size, rotation)


def make_act_quantizer(
    quant: QuantConfig | None, site: str, dim: int, rotation: HadamardRotation | None = None
) -> nn.Module:
    """The site's shared input quantizer; the bare rotation when the input is rotated but not
    quantized; nn.Identity when it is neither."""
    spec = None if quant is None else site_spec(quant, quant.site_formats(site)[1])
    if spec is None:
        return nn.Identity() if rotation is None else rotation
    return ActQuantizer(spec, quant.group, dim, quant.resolved_act_quantizer, rotation)


def set_quantizing(model: nn.Module, on: bool) -> None:
    """Switch a model's quantization (and rotations) on or off in place. Off, every site is
    the plain BF16 computation bit for bit, so a run that quantizes only from some step on
    trains its BF16 twin's steps until then; quantizer parameters get no gradient meanwhile."""
    for module in model.modules():
        if isinstance(module, QuantLinear | ActQuantizer | HadamardRotation):
            module.quantizing = on


def format_bits(fmt: str | QuantFormat | None) -> int:
    """Bits of a format; 16 stands for an unquantized (BF16/fp32) tensor."""
    return 16 if fmt is None else get_format(fmt).bits
