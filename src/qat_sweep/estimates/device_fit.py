"""What fits a device: the parallelism and micro-batches whose estimated peak memory stays within a
GPU's budget. Plan sizes runs with it; the trainer uses it for a run started without plan."""

from __future__ import annotations

import math

from qat_sweep.estimates.memory import estimate_memory
from qat_sweep.model.precision import QuantConfig
from qat_sweep.model.presets import ModelConfig

# Share of a GPU's memory the estimate may fill: the CUDA context, NCCL buffers and the
# caching allocator's fragmentation take the rest.
HEADROOM = 0.9


def divisors(n: int) -> list[int]:
    """Divisors of n, largest first."""
    return [m for m in range(n, 0, -1) if n % m == 0]


def fit(
    model: ModelConfig,
    quant: QuantConfig,
    *,
    vocab_size: int,
    seq_len: int,
    world_size: int,
    candidates: list[str],
    micro_options: list[int],
    eval_batch_seqs: int,
    activation_checkpointing: bool,
    budget: float,
    on_gpu: bool,
) -> tuple[str, int, int, float] | float:
    """(parallelism, micro-batch, eval micro-batch, peak bytes) of the first candidate and
    largest micro-batch that fit ``budget``; else the smallest peak seen (bytes)."""
    common = dict(
        vocab_size=vocab_size, seq_len=seq_len, world_size=world_size,
        activation_checkpointing=activation_checkpointing,
        dtype="bf16" if on_gpu else "fp32", device="cuda" if on_gpu else "cpu",
    )  # fmt: skip
    smallest = math.inf
    for parallelism in candidates:
        for micro in micro_options:
            est = estimate_memory(
                model, quant, micro_batch_seqs=micro, parallelism=parallelism, **common
            )
            step = max(est.train_peak, est.step_peak)
            smallest = min(smallest, step)
            if step > budget:
                continue
            for e in divisors(eval_batch_seqs):
                eval_peak = estimate_memory(
                    model, quant, micro_batch_seqs=micro, eval_batch_seqs=e,
                    parallelism=parallelism, **common,
                ).eval_peak  # fmt: skip
                if eval_peak <= budget:
                    return parallelism, micro, e, max(step, eval_peak)
    return smallest


def fit_on_device(
    model: ModelConfig,
    quant: QuantConfig,
    *,
    vocab_size: int,
    seq_len: int,
    per_rank: int,
    eval_batch_seqs: int,
    world_size: int,
    parallelism: str,
    activation_checkpointing: bool,
    device_bytes: float,
) -> tuple[str, int, int]:
    """What a run started without plan uses on a CUDA device: DDP if it fits, else FSDP, and
    the largest micro-batch that fits; the smallest choice when nothing does (it may OOM)."""
    candidates = ["ddp", "fsdp"] if parallelism == "auto" else [parallelism]
    fitted = fit(
        model, quant, vocab_size=vocab_size, seq_len=seq_len, world_size=world_size,
        candidates=candidates, micro_options=divisors(per_rank),
        eval_batch_seqs=eval_batch_seqs, activation_checkpointing=activation_checkpointing,
        budget=device_bytes * HEADROOM, on_gpu=True,
    )  # fmt: skip
    if isinstance(fitted, float):
        return candidates[-1], 1, 1
    return fitted[:3]
