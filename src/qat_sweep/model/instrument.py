"""Per-site quantization diagnostics: input kurtosis and quantization error of each linear site.

The paper explains the FC2-input result by that input's outliers (kurtosis 123 in BF16); these
statistics let every run record show the same evidence at its evaluation points. With a
rotation they are taken on what is quantized (the rotated input and weights: ``kurtosis_rotated``,
``act_nmse``, ``weight_nmse``) and on the unrotated tensors as well (``kurtosis``, and
``*_nmse_unrotated``: the error had the same format quantized them without the rotation), so a
record shows what the rotation bought.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from qat_sweep.common import finite_or_none
from qat_sweep.model.layers import ActQuantizer, QuantLinear, format_bits
from qat_sweep.model.precision import SITES
from qat_sweep.model.quantizers import fake_quantize, kurtosis, nmse
from qat_sweep.model.rotation import HadamardRotation
from qat_sweep.model.transformer import Transformer

# Where each site's (shared) input quantizer and its linears live inside a block.
SITE_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("attn.act_qkv", ("attn.q", "attn.k", "attn.v")),
    "o": ("attn.act_o", ("attn.o",)),
    "fc1": ("mlp.act_fc1", ("mlp.gate", "mlp.up")),
    "fc2": ("mlp.act_fc2", ("mlp.down",)),
}
STATS: tuple[str, ...] = ("kurtosis", "act_nmse", "weight_nmse", "act_bits", "weight_bits")
STATS += ("kurtosis_rotated", "act_nmse_unrotated", "weight_nmse_unrotated")  # None unrotated


def site_stats(model: Transformer, idx: Tensor) -> dict[str, dict[str, dict[str, Any]]]:
    """One no-grad forward on ``idx``; stats per layer (``blocks.{i}.{site}``) and per site.

    Per-site values are means over layers; ``act_nmse`` / ``weight_nmse`` are
    ||x_hat - x||^2 / ||x||^2 and None where the site's input / weights are not quantized; the
    ``_rotated`` / ``_unrotated`` statistics are None where the site is not rotated.
    A torch.compile'd model is unwrapped first: hooks need the eager modules.
    """
    model = getattr(model, "_orig_mod", model)
    layers: dict[str, dict[str, Any]] = {}
    handles = []
    for i, block in enumerate(model.blocks):
        for site, (act_path, linear_paths) in SITE_MODULES.items():
            key = f"blocks.{i}.{site}"
            act_module = block.get_submodule(act_path)
            linears = [block.get_submodule(p) for p in linear_paths]
            layers[key] = _weight_stats(act_module, linears)
            handles.append(act_module.register_forward_hook(_input_hook(layers[key])))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(idx)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {"sites": _average_over_layers(layers), "layers": layers}


def _mean(values: list[float]) -> float | None:
    return finite_or_none(sum(values) / len(values)) if values else None


def _weight_stats(act_module: nn.Module, linears: list[nn.Module]) -> dict[str, Any]:
    quantized = [m for m in linears if isinstance(m, QuantLinear) and m.spec is not None]
    rotated = quantized and quantized[0].rotation is not None
    act_fmt = act_module.fmt if isinstance(act_module, ActQuantizer) else None
    return {
        "kurtosis": None,
        "act_nmse": None,
        "weight_nmse": _mean([nmse(m.rotated_weight(), m.quantized_weight()) for m in quantized]),
        "act_bits": format_bits(act_fmt),
        "weight_bits": format_bits(quantized[0].spec if quantized else None),
        "kurtosis_rotated": None,
        "act_nmse_unrotated": None,
        "weight_nmse_unrotated": _mean(
            [nmse(m.weight, fake_quantize(m.weight, m.spec, m.group_size)) for m in quantized]
        )
        if rotated
        else None,
    }


def _input_hook(record: dict[str, Any]):
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        record["kurtosis"] = finite_or_none(kurtosis(x))
        rotation = module if isinstance(module, HadamardRotation) else None
        if isinstance(module, ActQuantizer):
            rotation = module.rotation
            record["act_nmse"] = finite_or_none(nmse(module.rotate(x), output))
            if rotation is not None:
                # AbsMax: a LAC clip factor was learned for the rotated groups
                unrotated = fake_quantize(x, module.spec, module.group_size)
                record["act_nmse_unrotated"] = finite_or_none(nmse(x, unrotated))
        if rotation is not None:
            record["kurtosis_rotated"] = finite_or_none(kurtosis(rotation.rotate(x)))

    return hook


def _average_over_layers(layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in SITES}
    for key, record in layers.items():
        site = key.rsplit(".", 1)[1]
        for stat in STATS:
            if record[stat] is not None:
                values[site][stat].append(record[stat])
    averaged = {}
    for site in SITES:
        averaged[site] = {}
        for stat in STATS:
            found = values[site][stat]
            mean = sum(found) / len(found) if found else None
            averaged[site][stat] = int(mean) if stat.endswith("_bits") and found else mean
    return averaged
