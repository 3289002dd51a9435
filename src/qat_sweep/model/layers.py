"""Precision schemes: which linear sites get quantized, to what, and the modules that do it.

Sites per block: ``qkv`` (input of q, k, v), ``o`` (input of o_proj), ``fc1`` (input of
gate/up) and ``fc2`` (input of down_proj). An input read by several linears is quantized once,
by one shared activation quantizer per site, as a real low-precision kernel would. With a
rotation, a site's input and its linears' weight rows are rotated by the same orthogonal
matrix (one module per site, shared), so the product is unchanged before quantization.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qat_sweep.model.precision import GroupSize, QuantConfig
from qat_sweep.model.quantizers import (
    LWC_INIT,
    QuantFormat,
    fake_quantize,
    get_format,
    grouped,
    lsq_init,
    lsq_quantize,
    lwc_quantize,
    resolve_group_size,
)
from qat_sweep.model.rotation import HadamardRotation

# Learned quantizer parameters (LAC factors, LSQ steps, LWC logits): never weight-decayed.
QUANTIZER_PARAMS: tuple[str, ...] = ("clip_logit", "clip_raw", "lsq_step", "lwc_upper", "lwc_lower")


def is_quantizer_param(name: str) -> bool:
    """Whether a parameter name (as ``named_parameters`` gives it) is a quantizer's own."""
    return name.rpartition(".")[2] in QUANTIZER_PARAMS


class QuantLinear(nn.Linear):
    """Bias-free linear whose weight is fake-quantized per output row, in groups along the
    input (or as one tensor), after the site's rotation of its rows (``fmt`` None: rotated,
    not quantized).

    ``weight_quantizer``: ``absmax`` (the paper's), ``lsq`` (a learned step per group,
    ``lsq_step``) or ``lwc`` (learned clipping logits per group, ``lwc_upper``/``lwc_lower``).
    The learned ones start from the weight: ``reset_quantizer`` once it is initialised.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: str | QuantFormat | None,
        group_size: GroupSize,
        rotation: HadamardRotation | None = None,
        weight_quantizer: str = "absmax",
        absmax_grad: bool = False,
    ):
        super().__init__(in_features, out_features, bias=False)
        self.spec = None if fmt is None else get_format(fmt)
        self.fmt = None if self.spec is None else self.spec.name
        self.group_size = group_size
        self.rotation = rotation
        self.weight_quantizer = weight_quantizer if self.spec is not None else "absmax"
        self.absmax_grad = absmax_grad
        if self.spec is None:
            return
        if group_size != "tensor":
            resolve_group_size(self.spec.block or group_size, (out_features, in_features))
        groups = grouped(torch.empty(out_features, in_features, device="meta"), group_size)
        if self.weight_quantizer == "lsq":
            self.lsq_step = nn.Parameter(torch.ones(groups.shape[:-1]))
        elif self.weight_quantizer == "lwc":
            self.lwc_upper = nn.Parameter(torch.full(groups.shape[:-1], LWC_INIT))
            self.lwc_lower = nn.Parameter(torch.full(groups.shape[:-1], LWC_INIT))

    @torch.no_grad()
    def reset_quantizer(self) -> None:
        """LSQ's step from the (rotated) weight as it is now: 2 mean|w| / sqrt(qmax) per group."""
        if self.weight_quantizer == "lsq":
            self.lsq_step.copy_(lsq_init(self.rotated_weight(), self.spec, self.group_size))

    def rotated_weight(self) -> Tensor:
        """The weight in the site's rotated basis (the weight itself without rotation)."""
        return self.weight if self.rotation is None else self.rotation(self.weight)

    def quantized_weight(self) -> Tensor:
        """The weight the product uses: rotated, then fake-quantized."""
        weight = self.rotated_weight()
        if self.spec is None:
            return weight
        if self.weight_quantizer == "lsq":
            return lsq_quantize(weight, self.lsq_step, self.spec, self.group_size)
        if self.weight_quantizer == "lwc":
            return lwc_quantize(
                weight, self.lwc_upper, self.lwc_lower, self.spec.bits, self.group_size
            )
        return fake_quantize(weight, self.spec, self.group_size, absmax_grad=self.absmax_grad)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight())

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, fmt={self.fmt}, group_size={self.group_size}, "
            f"weight_quantizer={self.weight_quantizer}"
        )


class ActQuantizer(nn.Module):
    """Per-token (or per-tensor), group-wise fake quantizer of one site's input (AbsMax or
    LAC), applied after the site's rotation when there is one.

    LAC (after OmniQuant/PrefixQuant): a clipping factor per group position, shared across
    tokens, multiplies the AbsMax scale. ``lac_param`` sigmoid (ours, the default) writes it
    as ``2 * sigmoid(theta)``: with ``lac_init`` 1.0, theta = 0, so it starts at exactly 1.0
    (plain AbsMax), stays in (0, 2) and has its steepest gradient at the start; ``raw`` learns
    the factor itself, unbounded, as PrefixQuant's code does (which starts it at 0.9). It learns
    through the LSQ-style STE gradient (rounding error pulls the factor down, clipped values
    push it back up). With a rotation, the groups LAC clips are groups of the rotated input.
    """

    def __init__(
        self,
        fmt: str | QuantFormat,
        group_size: GroupSize,
        dim: int,
        method: str,
        rotation: HadamardRotation | None = None,
        lac_param: str = "sigmoid",
        lac_init: float = 1.0,
        absmax_grad: bool = False,
    ):
        super().__init__()
        if method not in ("absmax", "lac"):
            raise ValueError(f"unknown activation quantizer {method!r}; allowed: absmax, lac")
        self.spec = get_format(fmt)
        self.fmt = self.spec.name
        self.group_size = group_size
        self.method = method
        self.rotation = rotation
        self.absmax_grad = absmax_grad
        tensor = group_size == "tensor"
        n_groups = 1 if tensor else dim // resolve_group_size(self.spec.block or group_size, (dim,))
        self.clip_logit = self.clip_raw = None
        if method == "lac" and lac_param == "sigmoid":
            start = math.log(lac_init / (2 - lac_init))  # 2 sigmoid(start) = lac_init; 1.0 -> 0
            self.clip_logit = nn.Parameter(torch.full((n_groups,), start))
        elif method == "lac":
            self.clip_raw = nn.Parameter(torch.full((n_groups,), float(lac_init)))

    def clip_factor(self) -> Tensor | None:
        if self.clip_logit is not None:
            return 2 * torch.sigmoid(self.clip_logit)
        return self.clip_raw

    def rotate(self, x: Tensor) -> Tensor:
        """What is quantized: the rotated input in fp32, or the input itself."""
        return x if self.rotation is None else self.rotation.rotate(x)

    def forward(self, x: Tensor) -> Tensor:
        quantized = fake_quantize(
            self.rotate(x), self.spec, self.group_size, self.clip_factor(), self.absmax_grad
        )
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
    quant: QuantConfig | None,
    rotation: HadamardRotation | None = None,
) -> nn.Linear:
    """A plain bias-free nn.Linear when neither quantized nor rotated (no extra code in the
    path); else a QuantLinear with ``quant``'s group, weight quantizer and AbsMax gradient."""
    if fmt is None and rotation is None:
        return nn.Linear(in_features, out_features, bias=False)
    assert quant is not None  # a format or a rotation comes from a quant config
    return QuantLinear(
        in_features, out_features, fmt, quant.group, rotation,
        quant.weight_quantizer, quant.absmax_grad,
    )  # fmt: skip


def make_act_quantizer(
    quant: QuantConfig | None, site: str, dim: int, rotation: HadamardRotation | None = None
) -> nn.Module:
    """The site's shared input quantizer; the bare rotation when the input is rotated but not
    quantized; nn.Identity when it is neither."""
    spec = None if quant is None else site_spec(quant, quant.site_formats(site)[1])
    if spec is None:
        return nn.Identity() if rotation is None else rotation
    return ActQuantizer(
        spec, quant.group, dim, quant.resolved_act_quantizer, rotation,
        quant.lac_param, quant.lac_init, quant.absmax_grad,
    )  # fmt: skip


def format_bits(fmt: str | QuantFormat | None) -> int:
    """Bits of a format; 16 stands for an unquantized (BF16/fp32) tensor."""
    return 16 if fmt is None else get_format(fmt).bits
