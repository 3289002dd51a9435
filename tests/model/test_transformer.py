"""Presets and the Llama-3-style model: shapes, N, bitwise BF16 path, validation, causality."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qat_sweep.model import presets
from qat_sweep.model.precision import QuantConfig, allowed_group_sizes
from qat_sweep.model.presets import available_presets, load_preset, model_config_from
from qat_sweep.model.transformer import Transformer, build_model, padded_vocab

PAPER_N = {
    "74M": 74.3e6,
    "145M": 144.7e6,
    "297M": 297.3e6,
    "595M": 594.5e6,
    "973M": 973.1e6,
    "2.8B": 2.82e9,
}
SMALL = ["0.04M", "0.07M", "0.15M", "0.2M", "0.5M", "1M", "2M", "5M", "10M", "20M"]
VOCAB = 97


def tiny(quant: QuantConfig | None = None, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return build_model(load_preset("0.2M"), quant, vocab_size=VOCAB)


def tokens(batch: int = 2, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "n"), PAPER_N.items())
def test_paper_presets_match_published_n(name: str, n: float) -> None:
    cfg = load_preset(name)
    assert abs(cfg.n_params - n) / n < 0.005
    assert cfg.seq_len == 2048 and cfg.warmup_steps == 500


def test_paper_preset_hyperparameters() -> None:
    batch_lr = {name: (load_preset(name).batch_seqs, load_preset(name).lr) for name in PAPER_N}
    assert batch_lr == {
        "74M": (256, 1.5e-3),
        "145M": (256, 1.0e-3),
        "297M": (512, 8e-4),
        "595M": (512, 6e-4),
        "973M": (512, 6e-4),
        "2.8B": (512, 6e-4),
    }


def test_available_presets_order_and_small_sizes() -> None:
    assert available_presets() == [*PAPER_N, *SMALL]
    sizes = [load_preset(name).n_params for name in SMALL]
    assert sizes == sorted(sizes)
    for name, n in zip(SMALL, sizes, strict=True):
        assert 0.7 < n / (float(name[:-1]) * 1e6) < 1.3, name
        cfg = load_preset(name)
        assert cfg.hidden_size % 64 == 0 and cfg.ffn_size % 128 == 0
        assert cfg.n_kv_heads < cfg.n_heads
        assert {16, 32, 64} <= set(allowed_group_sizes(cfg))


@pytest.mark.parametrize("name", SMALL[:4])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_model_n_params_matches_config(name: str, qk_norm: bool) -> None:
    cfg = dataclasses.replace(load_preset(name), qk_norm=qk_norm)
    model = build_model(cfg, QuantConfig("w4a4", "int4", 32), vocab_size=VOCAB)
    assert model.n_params == cfg.n_params
    total = sum(p.numel() for n, p in model.named_parameters() if "clip_logit" not in n)
    assert total == cfg.n_params_total(padded_vocab(VOCAB))  # embedding rows padded to 128


def test_qk_norm_normalises_the_whole_q_and_k_projections() -> None:
    cfg = dataclasses.replace(load_preset("0.2M"), qk_norm=True, norm_eps=1e-6)
    torch.manual_seed(0)
    attn = build_model(cfg, None, vocab_size=VOCAB).blocks[0].attn
    assert attn.q_norm.weight.shape == (cfg.hidden_size,) and attn.q_norm.eps == 1e-6
    assert attn.k_norm.weight.shape == (cfg.kv_dim,)
    q = attn.q_norm(attn.q(torch.randn(3, cfg.hidden_size)))
    torch.testing.assert_close(q.square().mean(-1), torch.ones(3), rtol=1e-4, atol=0)


def test_z_loss_adds_to_the_gradient_not_to_the_loss() -> None:
    idx, targets = tokens(), tokens(seed=1)
    losses, grads = [], []
    for z_loss in (0.0, 1e-2):
        torch.manual_seed(0)
        cfg = dataclasses.replace(load_preset("0.2M"), z_loss=z_loss)
        model = build_model(cfg, None, vocab_size=VOCAB)
        loss = model(idx, targets)
        loss.backward()
        losses.append(loss.item())
        grads.append(model.lm_head.weight.grad.clone())
    assert losses[0] == losses[1]  # the recorded loss is the cross-entropy either way
    assert not torch.equal(grads[0], grads[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init": "xavier"}, "model.init='xavier': unknown initialisation; allowed: olmo2, scaled"),
        ({"z_loss": -1.0}, "model.z_loss=-1.0: allowed: a number >= 0"),
        ({"norm_eps": 0.0}, "model.norm_eps=0.0: allowed: a number > 0"),
    ],
)
def test_model_choices_refuse_bad_values_by_name(change: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        model_config_from({**vars(load_preset("1M")), **change})
    assert message in str(error.value)


def test_unknown_preset_names_value_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"'7B'.*74M.*0\.2M"):
        load_preset("7B")


def test_custom_shape_from_dict_and_bad_keys() -> None:
    node = {**vars(load_preset("1M")), "name": "custom", "hidden_size": 192, "n_heads": 6}
    cfg = model_config_from(node)
    assert cfg.head_dim == 32 and cfg.n_params > load_preset("1M").n_params
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['dropout'\]; allowed: name, n_layers"
    ):
        model_config_from({**node, "dropout": 0.1})
    with pytest.raises(ValueError, match="n_heads 5"):
        model_config_from({**node, "n_heads": 5})
    without = {k: v for k, v in node.items() if k not in ("lr", "seq_len")}
    with pytest.raises(ValueError, match=r"missing key\(s\) \['seq_len', 'lr'\]"):
        model_config_from(without)


def test_model_yaml_builds_the_dataclass_it_describes() -> None:
    node = OmegaConf.load(presets.CONF_DIR / "model" / "74M.yaml")
    direct = presets.ModelConfig(**OmegaConf.to_container(node))  # no schema in between
    built = model_config_from(node)
    assert built == direct and [type(v) for v in vars(built).values()] == [
        type(v) for v in vars(direct).values()
    ]
    assert model_config_from({**vars(direct), "n_layers": "12"}) == direct  # a decimal string


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_layers": True}, "n_layers must be int, got True"),
        ({"n_layers": 3.0}, "n_layers must be int, got 3.0"),
        ({"hidden_size": 1.5}, "hidden_size must be int, got 1.5"),
        ({"vocab_size": "big"}, "vocab_size must be int | None, got 'big'"),
        ({"lr": False}, "lr must be float, got False"),
        ({"lr": None, "rope_theta": "x"}, "lr must be float, got None; rope_theta must be float"),
        ({"n_heads": "???"}, "missing key(s) ['n_heads']"),
    ],
)
def test_model_config_names_each_mistyped_or_missing_key(change: dict, message: str) -> None:
    node = {**vars(load_preset("1M")), **change}
    with pytest.raises(ValueError, match="model config: ") as error:
        model_config_from(node)
    assert message in str(error.value)


def test_conf_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    shutil.copy(presets.CONF_DIR / "model" / "1M.yaml", tmp_path / "model" / "1M.yaml")
    monkeypatch.setattr(presets, "CONF_DIR", tmp_path)
    assert available_presets() == ["1M"]


def test_forward_shapes_and_initial_loss() -> None:
    model = tiny()
    idx = tokens()
    assert model(idx).shape == (2, 32, VOCAB)
    loss = model(idx, tokens(seed=1))
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(math.log(VOCAB), rel=0.05)


def test_scaled_init_shrinks_the_residual_outputs() -> None:
    cfg = dataclasses.replace(load_preset("2M"), init="scaled")
    torch.manual_seed(0)
    model = build_model(cfg, None, vocab_size=VOCAB)
    expected = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].attn.o.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.up.weight.abs().max().item() > 0.06  # untruncated


def test_olmo2_init_is_one_truncated_normal_for_every_weight() -> None:
    cfg = load_preset("2M")
    assert cfg.init == "olmo2"
    torch.manual_seed(0)
    model = build_model(cfg, None, vocab_size=VOCAB)
    # N(0, 0.02) cut at +-3 sigma has std 0.02 x 0.9866
    for weight in (model.embed.weight[:VOCAB], model.lm_head.weight[:VOCAB]):
        assert weight.std().item() == pytest.approx(0.01973, rel=0.05)
    for name, module in model.blocks[0].named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.01973, rel=0.05), name
            assert module.weight.abs().max().item() <= 0.06, name
    assert torch.equal(model.embed.weight[VOCAB:], torch.zeros_like(model.embed.weight[VOCAB:]))


def test_bf16_scheme_is_bitwise_the_plain_model() -> None:
    plain, bf16 = tiny(None), tiny(QuantConfig("bf16", "bf16", None))
    assert str(plain) == str(bf16)
    idx, targets = tokens(), tokens(seed=1)
    assert torch.equal(plain(idx), bf16(idx))
    plain(idx, targets).backward()
    bf16(idx, targets).backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), bf16.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("scheme", ["bf16", "w4a4", "w16a4"])
def test_causal(scheme: str) -> None:
    quant = None if scheme == "bf16" else QuantConfig(scheme, "int4", "channel")
    model = tiny(quant)
    idx = tokens()
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.equal(a[:, 20:], b[:, 20:])


def test_quantized_model_trains_a_step() -> None:
    model = tiny(QuantConfig("w4a4", "fp4", 32))
    idx, targets = tokens(), tokens(seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(idx, targets)
    first.backward()
    optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model(idx, targets).item() < first.item()


def test_group_size_error_names_layer_shape_and_allowed() -> None:
    cfg = load_preset("2M")  # hidden 256, ffn 640: G = 256 fails only at the down projection
    with pytest.raises(ValueError) as err:
        build_model(cfg, QuantConfig("w4a4", "int4", 256), vocab_size=VOCAB)
    message = str(err.value)
    assert "group size 256" in message and "blocks.0.mlp.down" in message
    assert (
        "(256, 640)" in message
        and "allowed: 2, 4, 8, 16" in message
        and message.endswith("128, channel, tensor")
    )
    with pytest.raises(ValueError, match=r"group size 48 .*blocks\.0\.attn\.q"):
        build_model(load_preset("0.2M"), QuantConfig("w16a4", "int4", 48), vocab_size=VOCAB)


def test_vocab_size_required() -> None:
    with pytest.raises(ValueError, match="vocab_size is None"):
        build_model(load_preset("0.2M"), None)


def test_longer_than_seq_len_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        tiny()(torch.zeros(1, 129, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", ["bf16", "w4a4", "w4a4_fc2a8"])
def test_cuda_bf16_autocast_forward(scheme: str) -> None:
    quant = (
        QuantConfig("bf16", "bf16", None)
        if scheme == "bf16"
        else QuantConfig(scheme, "int4", "channel")
    )
    torch.manual_seed(0)
    model = build_model(load_preset("1M"), quant, vocab_size=VOCAB).cuda()
    idx = tokens().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model(idx, tokens(seed=1).cuda())
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(VOCAB), rel=0.1)
    loss.backward()
