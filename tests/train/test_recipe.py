"""AdamW's parameter groups: what weight decay reaches under each `optim.decay_norms`."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qat_sweep.model.precision import QuantConfig
from qat_sweep.model.presets import load_preset
from qat_sweep.model.transformer import build_model
from qat_sweep.train.recipe import make_optimizer

OPTIM = {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}


def decayed_names(decay_norms: bool, quant: QuantConfig) -> set[str]:
    model = build_model(load_preset("0.04M"), quant, vocab_size=64)
    optim = OmegaConf.create({**OPTIM, "decay_norms": decay_norms})
    optimizer = make_optimizer(model, optim, fused=False)
    names = {id(p): n for n, p in model.named_parameters()}
    (decay,) = [g for g in optimizer.param_groups if g["weight_decay"] == 0.1]
    (rest,) = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert len(decay["params"]) + len(rest["params"]) == len(names)
    return {names[id(p)] for p in decay["params"]}


@pytest.mark.parametrize("weight_quantizer", ["lsq", "lwc"])
def test_decay_reaches_linears_and_norms_never_embedding_or_quantizer_factors(
    weight_quantizer: str,
) -> None:
    quant = QuantConfig("w4a4", "int4", "channel", weight_quantizer=weight_quantizer)
    olmo2 = decayed_names(True, quant)
    earlier = decayed_names(False, quant)
    norms = {n for n in olmo2 if "norm" in n}
    assert norms and not any("norm" in n for n in earlier)  # gains: OLMo-2's choice only
    assert olmo2 - norms == earlier
    assert "lm_head.weight" in earlier and "blocks.0.mlp.down.weight" in earlier
    assert not any(
        n.startswith("embed") or n.endswith(("clip_logit", "lsq_step", "lwc_upper", "lwc_lower"))
        for n in olmo2
    )
