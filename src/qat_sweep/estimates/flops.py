"""FLOPs, GPU peaks and GPU-hours: the one place compute is counted.

Two counts, each labelled wherever it is printed:

* the model count ``flops_per_token`` (PaLM convention, no causal-mask discount):
  ``6 * (N + V * d) + 12 * n_layers * seq_len * d``, where N is the non-embedding parameter
  count, V * d the lm_head (the real vocabulary: padded rows are not model FLOPs) and the last
  term the attention score and value matmuls. The MFU that `train` records and `bench`
  reports, and every time or cost estimate (plan's GPU-hours, sizing's wall clock, status's
  share done), use it;
* the paper's compute ``paper_flops`` = 6 N D: the scaling law's compute axis, shown as
  "FLOPs(6ND)" by plan (``flops`` in its JSON rows).

MFU is per GPU: tokens/s of one GPU over its peak. Kept free of torch at import: plan and the
analysis import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qat_sweep.model.presets import ModelConfig

if TYPE_CHECKING:
    import torch

# Dense BF16 tensor-core peaks (no sparsity) in TFLOP/s, by the GPU type a launch profile
# names (gpu_type) and matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: dict[str, float] = {"A100": 312.0, "H100": 989.0, "H200": 989.0}
# H100 PCIe/NVL have lower peaks that are not tabled: MFU unknown rather than wrong.
_UNTABLED_VARIANTS = ("H100 PCIe", "H100 NVL")
# The cost options' defaults (plan, design, suggest): a 40 % MFU on an A100.
DEFAULT_MFU = 0.4
DEFAULT_PEAK_TFLOPS = PEAK_BF16_TFLOPS["A100"]
# Activation checkpointing runs each block's forward again in backward: 8 instead of 6 per
# parameter and token, 4/3 of the model count (which, like MFU, leaves the recompute out).
RECOMPUTE_FACTOR = 4 / 3

PAPER_LABEL = "FLOPs(6ND)"
MODEL_COUNT = "6(N+Vd)+12LTd per token"  # flops_per_token, as printed beside a GPU-hour count


def flops_per_token(model: ModelConfig, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs per token: 6 (N + V d) + 12 L T d (see the module docstring)."""
    d = model.hidden_size
    return 6.0 * (model.n_params + vocab_size * d) + 12.0 * model.n_layers * seq_len * d


def paper_flops(n_params: float, tokens: float) -> float:
    """The paper's training compute C = 6 N D (N non-embedding): the law's compute axis."""
    return 6.0 * n_params * tokens


def run_flops(flops_token: float, tokens: float, activation_checkpointing: bool = False) -> float:
    """FLOPs a run executes: the model count over its tokens, the recompute included."""
    return flops_token * tokens * (RECOMPUTE_FACTOR if activation_checkpointing else 1.0)


def gpu_hours(flops: float, mfu: float, peak_tflops: float) -> float:
    """GPU-hours to execute ``flops`` at ``mfu`` of a ``peak_tflops`` GPU."""
    return flops / (mfu * peak_tflops * 1e12) / 3600.0


def peak_flops(device: torch.device) -> float | None:
    """The device's dense BF16 peak in FLOP/s, or None when it is not in the table (MFU null)."""
    if device.type != "cuda":
        return None
    import torch  # here: the module is imported by plan, which runs without torch

    name = torch.cuda.get_device_name(device)
    if any(variant in name for variant in _UNTABLED_VARIANTS):
        return None
    peaks = PEAK_BF16_TFLOPS.items()
    return next((tflops * 1e12 for marker, tflops in peaks if marker in name), None)


def mfu(
    tokens_per_s: float, flops_token: float, peak: float | None, world_size: int = 1
) -> float | None:
    """Model FLOPs utilisation per GPU from the global token rate of ``world_size`` GPUs."""
    if not peak:
        return None
    return tokens_per_s * flops_token / (peak * world_size)
