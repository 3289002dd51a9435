"""Scheme routing, shared per-site activation quantizers, LAC, configs and site statistics."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from qat_sweep.model.instrument import site_stats
from qat_sweep.model.layers import ActQuantizer, QuantLinear
from qat_sweep.model.precision import SCHEMES, SITES, QuantConfig, quant_config_from
from qat_sweep.model.presets import CONF_DIR, load_preset
from qat_sweep.model.quantizers import fake_quantize
from qat_sweep.model.transformer import build_model

VOCAB = 61
SITE_PATHS = {
    "qkv": ("attn.act_qkv", ["attn.q", "attn.k", "attn.v"]),
    "o": ("attn.act_o", ["attn.o"]),
    "fc1": ("mlp.act_fc1", ["mlp.gate", "mlp.up"]),
    "fc2": ("mlp.act_fc2", ["mlp.down"]),
}
# (weight bits, input bits) per site, written out independently of SCHEMES.
EXPECTED_BITS = {
    "bf16": {"qkv": (16, 16), "o": (16, 16), "fc1": (16, 16), "fc2": (16, 16)},
    "w4a4": {"qkv": (4, 4), "o": (4, 4), "fc1": (4, 4), "fc2": (4, 4)},
    "w4a16": {"qkv": (4, 16), "o": (4, 16), "fc1": (4, 16), "fc2": (4, 16)},
    "w16a4": {"qkv": (16, 4), "o": (16, 4), "fc1": (16, 4), "fc2": (16, 4)},
    "w4a4_fc2a8": {"qkv": (4, 4), "o": (4, 4), "fc1": (4, 4), "fc2": (4, 8)},
    "w16a4_fc2a8": {"qkv": (16, 4), "o": (16, 4), "fc1": (16, 4), "fc2": (16, 8)},
}


def quant_for(scheme: str, fmt: str = "int4", group: int | str = 32) -> QuantConfig:
    if scheme == "bf16":
        return QuantConfig("bf16", "bf16", None)
    return QuantConfig(scheme, fmt, group)


def model_for(quant: QuantConfig | None, preset: str = "0.2M") -> nn.Module:
    torch.manual_seed(0)
    return build_model(load_preset(preset), quant, vocab_size=VOCAB)


def idx() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))


def test_schemes_table() -> None:
    table = {
        s: {site: (p.weight_bits, p.act_bits) for site, p in v.items()} for s, v in SCHEMES.items()
    }
    assert table == EXPECTED_BITS


@pytest.mark.parametrize("scheme", list(EXPECTED_BITS))
def test_routing_per_site(scheme: str) -> None:
    model = model_for(quant_for(scheme, "fp4"))
    for block in model.blocks:
        for site, (act_path, linear_paths) in SITE_PATHS.items():
            weight_bits, act_bits = EXPECTED_BITS[scheme][site]
            act = block.get_submodule(act_path)
            if act_bits == 16:
                assert isinstance(act, nn.Identity)
            else:
                assert isinstance(act, ActQuantizer)
                assert act.fmt == ("int8" if act_bits == 8 else "fp4")
            for path in linear_paths:
                linear = block.get_submodule(path)
                if weight_bits == 16:
                    assert type(linear) is nn.Linear
                else:
                    assert isinstance(linear, QuantLinear) and linear.fmt == "fp4"
    assert type(model.lm_head) is nn.Linear and type(model.embed) is nn.Embedding


def test_shared_activation_quantizer_is_called_once_per_site() -> None:
    model = model_for(quant_for("w4a4"))
    block = model.blocks[0]
    calls: dict[str, int] = {}
    seen: dict[str, torch.Tensor] = {}
    for site, (act_path, linear_paths) in SITE_PATHS.items():
        act = block.get_submodule(act_path)
        act.register_forward_hook(
            lambda m, i, o, site=site: calls.update({site: calls.get(site, 0) + 1})
        )
        act.register_forward_hook(lambda m, i, o, site=site: seen.update({site: o}))
        for path in linear_paths:
            block.get_submodule(path).register_forward_pre_hook(
                lambda m, i, site=site, path=path: seen.update({path: i[0]})
            )
    with torch.no_grad():
        model(idx())
    assert calls == {"qkv": 1, "o": 1, "fc1": 1, "fc2": 1}
    for site, (_, linear_paths) in SITE_PATHS.items():
        for path in linear_paths:
            assert seen[path] is seen[site], path
    assert sum(isinstance(m, ActQuantizer) for m in block.modules()) == 4


def test_quant_linear_uses_grouped_fake_quantized_weight() -> None:
    linear = QuantLinear(64, 8, "int4", 16)
    x = torch.randn(3, 64)
    expected = x @ fake_quantize(linear.weight, "int4", 16).T
    torch.testing.assert_close(linear(x), expected)


@pytest.mark.parametrize(
    ("group", "method", "expected"),
    [
        (32, "absmax", None),
        (128, "absmax", None),
        (256, "lac", 2),
        ("channel", "lac", 1),
        ("tensor", "lac", 1),
    ],
)
def test_auto_act_quantizer_follows_paper(
    group: int | str, method: str, expected: int | None
) -> None:
    quant = QuantConfig("w16a4", "int4", group)
    assert quant.resolved_act_quantizer == method
    model = model_for(quant, "10M")  # hidden 512, ffn 1280: every G here divides
    act = model.blocks[0].attn.act_qkv
    assert act.method == method
    assert (act.clip_logit is None) if expected is None else act.clip_logit.shape == (expected,)
    assert QuantConfig("w16a4", "int4", 32, act_quantizer="lac").resolved_act_quantizer == "lac"
    assert QuantConfig("w16a4", "int4", "channel", "absmax").resolved_act_quantizer == "absmax"
    # Appendix E's "G > 256": LAC from the next G up; Section 4.1's ">= 256" is the default.
    after = QuantConfig("w16a4", "int4", 256, lac_min_group=257)
    assert after.resolved_act_quantizer == "absmax"


def test_lac_starts_at_absmax_and_learns() -> None:
    lac = ActQuantizer("int4", 16, 64, "lac")
    absmax = ActQuantizer("int4", 16, 64, "absmax")
    x = torch.randn(10, 64) * torch.linspace(0.1, 10, 64)
    assert torch.equal(lac.clip_factor(), torch.ones(4))
    torch.testing.assert_close(lac(x), absmax(x), rtol=0, atol=0)
    ((lac(x) - x) ** 2).sum().backward()
    assert lac.clip_logit.grad is not None and lac.clip_logit.grad.abs().sum() > 0


def test_lac_learns_to_clip_large_gaussian_groups() -> None:
    """A 2048-wide Gaussian row has absmax near 3.5 sigma; 4-bit MSE is lower clipped nearer 2.5."""
    x = torch.randn(64, 2048, generator=torch.Generator().manual_seed(0))
    lac = ActQuantizer("int4_sym", "channel", 2048, "lac")
    optimizer = torch.optim.Adam(lac.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = ((lac(x) - x) ** 2).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert 0.5 < lac.clip_factor().item() < 0.85
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"scheme": "w3a3"}, r"'w3a3'.*bf16, w4a4"),
        ({"scheme": "w4a4", "format": "nf4"}, r"'nf4'.*int4, int4_sym, fp4"),
        ({"scheme": "w4a4", "group_size": 0}, "group_size must be"),
        ({"scheme": "w4a4", "group_size": "row"}, "'row'"),
        ({"scheme": "w4a4", "act_quantizer": "minmax"}, "'minmax'"),
        ({"scheme": "w4a4", "fc2_format": "fp8"}, "'fp8'"),
        ({"scheme": "bf16", "format": "int4"}, "scheme bf16 takes format bf16"),
        ({"scheme": "w4a4", "format": "mxfp4"}, r"group_size=128 .* block of 32 .* null or 32"),
        ({"scheme": "w4a4", "format": "nvint4", "group_size": 32}, r"allowed: null or 16"),
        (
            {"scheme": "w4a4", "format": "nvfp4", "group_size": None, "scale_rounding": "rceil"},
            r"scale_rounding='rceil' with format nvfp4: .* \(mxfp4, mxint4\); allowed: null",
        ),
        (
            {"scheme": "w4a4", "format": "mxfp4", "group_size": None, "scale_rounding": "ceil"},
            r"'ceil'; allowed: null, floor, rceil",
        ),
        ({"scheme": "w4a4", "scale_rounding": "floor"}, r"with format int4"),
        ({"scheme": "w4a4", "weight_quantizer": "gptq"}, r"'gptq'; allowed: absmax, lsq, lwc"),
        (
            {"scheme": "w4a4", "format": "fp4", "weight_quantizer": "lwc"},
            r"weight_quantizer=lwc with format fp4: allowed formats: int4",
        ),
        (
            {"scheme": "w4a4", "format": "mxfp4", "group_size": None, "weight_quantizer": "lsq"},
            r"allowed formats: int4, int4_sym, fp4",
        ),
        ({"scheme": "w4a4", "lac_param": "tanh"}, r"'tanh'; allowed: sigmoid, raw"),
        ({"scheme": "w4a4", "lac_init": 2.0}, r"lac_init=2.0 with lac_param sigmoid: .*\(0, 2\)"),
        ({"scheme": "w4a4", "lac_param": "raw", "lac_init": 0.0}, r"lac_init=0.0 .*\(0, inf\)"),
        ({"scheme": "w4a4", "lac_min_group": 0}, r"lac_min_group=0: allowed: a whole number >= 1"),
        (
            {"scheme": "w4a4", "format": "mxint4", "group_size": None, "absmax_grad": True},
            r"absmax_grad=true with format mxint4: .*allowed: false",
        ),
        (
            {"scheme": "w4a4", "format": "mxfp4", "group_size": None, "int4_range": "full"},
            r"int4_range='full' with format mxfp4: only mxint4, nvint4",
        ),
        (
            {"scheme": "w4a4", "format": "mxint4", "group_size": None, "int4_range": "all"},
            r"'all'; allowed: null, symmetric, full",
        ),
        (
            {"scheme": "w4a4", "format": "mxfp4", "group_size": None, "act_quantizer": "lac"},
            r"act_quantizer='lac' with format mxfp4: .* E8M0 .* allowed: auto or absmax",
        ),
        ({"scheme": "w4a4", "rotation": "givens"}, r"'givens'; allowed: none, hadamard"),
        (
            {"scheme": "w4a4", "rotation": "hadamard", "rotation_block": 48},
            r"rotation_block=48: .* power of two",
        ),
        (
            {"scheme": "w4a4", "group_size": "channel", "rotation": "hadamard"},
            r"group 'channel' is not a power of two",
        ),
        ({"scheme": "w4a4", "group_size": 96, "rotation": "hadamard"}, r"group 96"),
        ({"scheme": "w4a4", "rotation_block": 32}, r"rotation_block=32 with rotation none"),
        ({"scheme": "w4a4", "rotation": "hadamard", "rotation_seed": -1}, r"rotation_seed=-1"),
        (
            {"scheme": "bf16", "format": "bf16", "group_size": None, "rotation": "hadamard"},
            r"rotation=hadamard with scheme bf16",
        ),
    ],
)
def test_quant_config_errors_name_the_value(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        QuantConfig(**kwargs)


def test_block_formats_group_and_labels() -> None:
    mx = QuantConfig("w4a4", "mxfp4", None)
    assert (mx.block, mx.group, mx.resolved_act_quantizer, mx.label) == (32, 32, "absmax", "mxfp4")
    nv = QuantConfig("w4a4", "nvint4", 16, int4_range="full", rotation="hadamard")
    assert (nv.group, nv.resolved_rotation_block, nv.label) == (16, 16, "nvint4-full-had")
    rotated = QuantConfig("w4a4", "int4", 32, rotation="hadamard", rotation_block=64,
                          rotation_seed=3)  # fmt: skip
    assert (rotated.resolved_rotation_block, rotated.label) == (64, "int4-had64s3")
    assert QuantConfig("w4a4", "mxfp4", None, scale_rounding="floor").label == "mxfp4"
    assert QuantConfig("w4a4", "mxfp4", 32, scale_rounding="rceil").label == "mxfp4-rceil"


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxint4", "nvint4"])
@pytest.mark.parametrize("scheme", list(EXPECTED_BITS)[1:])
def test_block_formats_route_to_every_scheme(scheme: str, fmt: str) -> None:
    model = model_for(QuantConfig(scheme, fmt, None))
    block = 32 if fmt.startswith("mx") else 16
    for site, (act_path, linear_paths) in SITE_PATHS.items():
        weight_bits, act_bits = EXPECTED_BITS[scheme][site]
        act = model.blocks[0].get_submodule(act_path)
        if act_bits < 16:
            assert act.fmt == ("int8" if act_bits == 8 else fmt) and act.group_size == block
        for path in linear_paths:
            linear = model.blocks[0].get_submodule(path)
            assert linear.fmt == fmt if weight_bits < 16 else type(linear) is nn.Linear
    idx_ = idx()
    loss = model(idx_, idx_)
    loss.backward()
    assert torch.isfinite(loss)


def test_quant_yaml_files_and_overrides() -> None:
    names = sorted(p.stem for p in (CONF_DIR / "quant").glob("*.yaml"))
    assert names == sorted(SCHEMES)
    for name in names:
        quant = quant_config_from(OmegaConf.load(CONF_DIR / "quant" / f"{name}.yaml"))
        assert quant.scheme == name
    node = OmegaConf.load(CONF_DIR / "quant" / "w4a4.yaml")
    node = OmegaConf.merge(node, OmegaConf.from_dotlist(["format=fp4", "group_size=channel"]))
    quant = quant_config_from(node)
    assert (quant.format, quant.group_size, quant.resolved_act_quantizer) == (
        "fp4",
        "channel",
        "lac",
    )
    with pytest.raises(ValueError, match=r"unknown keys \['bits'\]"):
        quant_config_from({"scheme": "w4a4", "bits": 4})


def test_site_stats_shape_and_values() -> None:
    stats = site_stats(model_for(quant_for("w4a4_fc2a8")), idx())
    json.dumps(stats, allow_nan=False)
    assert set(stats["sites"]) == set(SITES)
    assert set(stats["layers"]) == {f"blocks.{i}.{s}" for i in range(3) for s in SITES}
    for site, values in stats["sites"].items():
        assert values["kurtosis"] > 1.0
        assert 0 < values["act_nmse"] < 0.2 and 0 < values["weight_nmse"] < 0.2
        assert values["weight_bits"] == 4 and values["act_bits"] == (8 if site == "fc2" else 4)
    assert stats["sites"]["fc2"]["act_nmse"] < stats["sites"]["fc1"]["act_nmse"]
    layer_mean = sum(stats["layers"][f"blocks.{i}.o"]["kurtosis"] for i in range(3)) / 3
    assert stats["sites"]["o"]["kurtosis"] == pytest.approx(layer_mean)


@pytest.mark.parametrize("scheme", ["bf16", "w4a16", "w16a4"])
def test_site_stats_null_where_unquantized(scheme: str) -> None:
    model = model_for(quant_for(scheme))
    model.train()
    stats = site_stats(model, idx())
    assert model.training
    weights, acts = EXPECTED_BITS[scheme]["qkv"]
    for values in [*stats["sites"].values(), *stats["layers"].values()]:
        assert values["kurtosis"] is not None
        assert (values["weight_nmse"] is None) == (weights == 16)
        assert (values["act_nmse"] is None) == (acts == 16)
        assert (values["weight_bits"], values["act_bits"]) == (weights, acts)


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({}, "int4"),
        ({"weight_quantizer": "lsq"}, "int4-lsq"),
        ({"weight_quantizer": "lwc", "absmax_grad": True}, "int4-lwc-ag"),
        ({"act_quantizer": "absmax"}, "int4"),  # the paper's pick at G = 32: no mark
        ({"act_quantizer": "lac"}, "int4-lac"),
        ({"group_size": "channel", "act_quantizer": "absmax"}, "int4-absmax"),
        ({"group_size": 256, "lac_min_group": 257}, "int4-lacmin257"),
        ({"lac_param": "raw", "lac_init": 0.9}, "int4-lacraw-lac0.9"),
    ],
)
def test_labels_name_the_quantizers_that_differ_from_the_papers(kwargs: dict, label: str) -> None:
    assert QuantConfig("w4a4", **{"format": "int4", "group_size": 32, **kwargs}).label == label
