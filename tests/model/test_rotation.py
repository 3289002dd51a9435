"""Hadamard rotation: orthogonal, the same product without quantization, lower error on heavy
tails, shared per site, measured before and after by the site statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qat_sweep.model import layers
from qat_sweep.model.instrument import site_stats
from qat_sweep.model.layers import ActQuantizer, QuantLinear
from qat_sweep.model.precision import QuantConfig
from qat_sweep.model.presets import load_preset
from qat_sweep.model.quantizers import fake_quantize, nmse
from qat_sweep.model.rotation import HadamardRotation, hadamard_matrix
from qat_sweep.model.transformer import build_model

VOCAB = 61


def student_t(rows: int, cols: int, df: float = 3.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=generator)
    chi2 = torch.randn(int(df), rows, cols, generator=generator).square().sum(0)
    return normal / (chi2 / df).sqrt()


def fc2_like(rows: int = 256, cols: int = 512, seed: int = 0) -> torch.Tensor:
    """A SwiGLU output with a few outlier channels, as the paper describes the FC2 input."""
    generator = torch.Generator().manual_seed(seed)
    gate, up = torch.randn(2, rows, cols, generator=generator)
    x = nn.functional.silu(gate) * up
    x[:, torch.randperm(cols, generator=generator)[:4]] *= 40.0
    return x


@pytest.mark.parametrize("n", [1, 2, 16, 32, 128])
def test_hadamard_is_symmetric_and_orthogonal(n: int) -> None:
    h = hadamard_matrix(n)
    assert torch.equal(h, h.T)
    torch.testing.assert_close(h @ h, torch.eye(n), rtol=0, atol=1e-6)
    assert torch.equal(h.abs(), torch.full((n, n), n**-0.5))


def test_rotation_refuses_bad_blocks() -> None:
    with pytest.raises(ValueError, match="order 24 is not a power of two"):
        hadamard_matrix(24)
    with pytest.raises(ValueError, match="block 32 does not divide the dimension 48"):
        HadamardRotation(48, 32)


@pytest.mark.parametrize("seed", [None, 3])
def test_unquantized_rotated_linear_equals_the_plain_one(seed: int | None) -> None:
    rotation = HadamardRotation(128, 32, seed)
    linear = QuantLinear(128, 48, None, None, rotation)
    x = torch.randn(5, 7, 128)
    expected = x @ linear.weight.T
    torch.testing.assert_close(linear(rotation(x)), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(rotation(x), x)
    norms = rotation(x).norm(dim=-1)
    torch.testing.assert_close(norms, x.norm(dim=-1))


@pytest.mark.parametrize("scheme", ["w4a4", "w4a16", "w16a4", "w4a4_fc2a8"])
@pytest.mark.parametrize("fmt", ["mxfp4", "int4"])
def test_rotated_model_without_quantization_is_the_plain_model(
    scheme: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fake quantizer made the identity, every site's rotations cancel: the rotated
    model computes the unrotated model's logits to fp32 rounding (same weights, same seed)."""
    monkeypatch.setattr(layers, "fake_quantize", lambda x, *args, **kwargs: x)
    group = None if fmt == "mxfp4" else 32
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for rotation, seed in (("none", None), ("hadamard", 7)):
        torch.manual_seed(0)
        quant = QuantConfig(scheme, fmt, group, rotation=rotation, rotation_seed=seed)
        model = build_model(load_preset("0.2M"), quant, vocab_size=VOCAB)
        logits[rotation] = model(idx)
    torch.testing.assert_close(logits["hadamard"], logits["none"], rtol=1e-5, atol=1e-5)


def test_one_rotation_per_site_shared_by_input_and_weights() -> None:
    quant = QuantConfig("w4a4", "nvfp4", None, rotation="hadamard", rotation_block=64)
    model = build_model(load_preset("0.2M"), quant, vocab_size=VOCAB)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert attn.q.rotation is attn.k.rotation is attn.v.rotation is attn.act_qkv.rotation
    assert mlp.down.rotation is mlp.act_fc2.rotation and mlp.down.rotation.dim == 256
    assert attn.o.rotation is not attn.q.rotation and attn.o.rotation.block == 64
    assert not any("matrix" in k or "signs" in k for k in model.state_dict())  # not saved
    # W4A16: the input is rotated (not quantized) so that the rotated weights see it
    w4a16 = build_model(load_preset("0.2M"), QuantConfig("w4a16", "mxint4", None,
                        rotation="hadamard"), vocab_size=VOCAB)  # fmt: skip
    assert isinstance(w4a16.blocks[0].attn.act_qkv, HadamardRotation)


def _errors(x: torch.Tensor, fmt: str, group: int | None) -> tuple[float, float]:
    """nmse of ``x`` quantized as it is, and rotated (blocks of 32, random signs)."""
    rotated = HadamardRotation(x.shape[-1], 32, seed=0).rotate(x)
    return nmse(x, fake_quantize(x, fmt, group)), nmse(rotated, fake_quantize(rotated, fmt, group))


@pytest.mark.parametrize(
    ("fmt", "group"), [("mxfp4", None), ("mxint4", None), ("nvint4", None), ("int4", 32)]
)
@pytest.mark.parametrize("data", ["student_t3", "fc2_like"])
def test_rotation_lowers_the_error_of_heavy_tailed_inputs(fmt, group, data: str) -> None:
    """INT4 elements, and E2M1 under a coarse power-of-two scale, gain from spreading the
    outliers: by 30-60 % here (scripts/check-formats prints the table)."""
    plain, rotated = _errors(
        student_t(256, 512) if data == "student_t3" else fc2_like(), fmt, group
    )
    assert rotated < 0.8 * plain, (plain, rotated)


@pytest.mark.parametrize(("fmt", "group"), [("nvfp4", None), ("fp4", 16)])
def test_rotation_does_not_help_e2m1_with_fine_scales_on_outlier_channels(fmt, group) -> None:
    """E2M1's levels are already spaced for heavy tails; with a fine (E4M3 or fp32) block scale
    the Gaussian-like rotated blocks quantize worse: measured, so the sweep compares both."""
    plain, rotated = _errors(fc2_like(), fmt, group)
    assert rotated > 1.5 * plain, (plain, rotated)


def test_lac_learns_on_rotated_groups() -> None:
    rotation = HadamardRotation(256, 32)
    lac = ActQuantizer("int4", 32, 256, "lac", rotation)
    x = fc2_like(64, 256)
    out = lac(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    ((out - rotation(x)) ** 2).sum().backward()
    assert lac.clip_logit.grad is not None and lac.clip_logit.grad.abs().sum() > 0


def test_site_stats_before_and_after_rotation() -> None:
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    quant = QuantConfig("w4a4", "mxfp4", None, rotation="hadamard")
    model = build_model(load_preset("0.2M"), quant, vocab_size=VOCAB)
    stats = site_stats(model, idx)
    block = model.blocks[0].mlp
    for key in ("kurtosis_rotated", "act_nmse_unrotated", "weight_nmse_unrotated"):
        assert all(values[key] is not None for values in stats["sites"].values()), key
    layer = stats["layers"]["blocks.0.fc2"]
    weight = block.down.weight
    rotated = block.down.rotated_weight()
    assert layer["weight_nmse"] == pytest.approx(
        nmse(rotated, fake_quantize(rotated, "mxfp4", None))
    )
    assert layer["weight_nmse_unrotated"] == pytest.approx(
        nmse(weight, fake_quantize(weight, "mxfp4", None))
    )
    torch.manual_seed(0)
    plain = site_stats(build_model(load_preset("0.2M"), QuantConfig("w4a4", "mxfp4", None),
                                   vocab_size=VOCAB), idx)  # fmt: skip
    # same weights, same inputs up to the rotation: the unrotated statistics are the plain ones
    assert layer["weight_nmse_unrotated"] == plain["layers"]["blocks.0.fc2"]["weight_nmse"]
    assert (
        stats["layers"]["blocks.0.qkv"]["kurtosis"] == plain["layers"]["blocks.0.qkv"]["kurtosis"]
    )
    assert stats["layers"]["blocks.0.qkv"]["act_nmse_unrotated"] == pytest.approx(
        plain["layers"]["blocks.0.qkv"]["act_nmse"]
    )
    for values in plain["sites"].values():
        assert values["kurtosis_rotated"] is None and values["act_nmse_unrotated"] is None
