"""The memory model against measurement: saved tensors, parameters, gradients, AdamW states."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from qat_sweep.memory import GB, estimate_memory
from qat_sweep.model import build_model
from qat_sweep.presets import load_preset
from qat_sweep.schemes import QuantConfig

VOCAB = 512
PRESETS = ("0.2M", "0.5M", "1M")
QUANTS = {
    "bf16": None,
    "w4a4_g32": QuantConfig("w4a4", "int4", 32, "absmax"),
    "w4a4_channel_lac": QuantConfig("w4a4", "int4", "channel", "lac"),
}


def measure(preset: str, quant: QuantConfig | None, micro: int, autocast: bool) -> dict:
    """Bytes of one real step: distinct saved storages (not parameters), then the state."""
    torch.manual_seed(0)
    cfg = load_preset(preset)
    model = build_model(cfg, quant, VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, VOCAB, (micro, cfg.seq_len))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        loss = model(x, x.roll(1, dims=1))
    loss.backward()
    optimizer.step()
    buffers = sum(b.nbytes for b in model.buffers())
    return {
        "saved": sum(saved.values()) + buffers,  # RoPE tables: buffers that sdpa's inputs save
        "state": sum(p.nbytes for p in model.parameters())
        + sum(p.grad.nbytes for p in model.parameters())
        + sum(t.nbytes for s in optimizer.state.values() for t in s.values() if t.ndim)
        + buffers,
    }


def estimate(preset: str, quant: QuantConfig | None, micro: int, dtype: str):
    cfg = load_preset(preset)
    return estimate_memory(
        cfg, quant, vocab_size=VOCAB, seq_len=cfg.seq_len, micro_batch_seqs=micro,
        dtype=dtype, device="cpu",
    )  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("scheme", list(QUANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_is_within_15_percent_of_measured_bytes(
    preset: str, scheme: str, dtype: str
) -> None:
    """fp32 is the CPU trainer; bf16 autocast on CPU saves what CUDA autocast saves."""
    quant = QUANTS[scheme]
    measured = measure(preset, quant, micro=4, autocast=dtype == "bf16")
    est = estimate(preset, quant, 4, dtype)
    assert est.saved_bytes == pytest.approx(measured["saved"], rel=0.15), est.saved
    assert est.state_bytes == pytest.approx(measured["state"], rel=0.15), est.state
    total = measured["saved"] + measured["state"]
    assert est.saved_bytes + est.state_bytes == pytest.approx(total, rel=0.15)


def test_items_scale_the_way_the_trainer_allocates() -> None:
    cfg = load_preset("973M")
    quant = QuantConfig("w4a4", "int4", 128)
    args = dict(vocab_size=100_278, seq_len=2048, eval_batch_seqs=16)
    one = estimate_memory(cfg, quant, micro_batch_seqs=1, parallelism="ddp", world_size=8, **args)
    two = estimate_memory(cfg, quant, micro_batch_seqs=2, parallelism="ddp", world_size=8, **args)
    fsdp = estimate_memory(cfg, quant, micro_batch_seqs=1, parallelism="fsdp", world_size=8, **args)
    ckpt = estimate_memory(
        cfg, quant, micro_batch_seqs=1, parallelism="ddp", world_size=8,
        activation_checkpointing=True, **args,
    )  # fmt: skip
    # NOTES.md: 1.38B parameters -> 16 bytes each of fp32 params, grads and AdamW ~ 22 GB.
    assert one.state["parameters"] + one.state["optimizer"] == pytest.approx(1.38e9 * 12, rel=0.02)
    # Activations grow with the micro-batch, the quantized weight copies do not.
    assert two.saved["activations"] == pytest.approx(2 * one.saved["activations"], rel=0.01)
    assert two.saved["quantized_weights"] == one.saved["quantized_weights"]
    # FSDP shards the state 8 ways; checkpointing keeps one block's activations.
    assert fsdp.state["optimizer"] == pytest.approx(one.state["optimizer"] / 8)
    assert ckpt.saved["activations"] < one.saved["activations"] / 4
    # NOTES.md: 16 eval sequences of fp32 logits over 100k tokens are ~33 GB.
    assert 30 < one.eval["logits"] / GB < 36


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", list(QUANTS))
def test_estimate_bounds_cuda_max_memory_allocated(scheme: str) -> None:
    """One real bf16-autocast step on the GPU peaks within 15 % of the estimate."""
    cfg, quant, micro = load_preset("20M"), QUANTS[scheme], 8
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model = build_model(cfg, quant, 32_000).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 32_000, (micro, cfg.seq_len), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, x.roll(1, dims=1))
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() - base
    est = estimate_memory(
        cfg, quant, vocab_size=32_000, seq_len=cfg.seq_len, micro_batch_seqs=micro
    )
    assert est.train_peak == pytest.approx(peak, rel=0.15), est.items()
