"""Model FLOPs per token and device peaks: the MFU that `train` records and `bench` reports.

FLOPs per token (PaLM convention, no causal-mask discount):
``6 * (N + V * d) + 12 * n_layers * seq_len * d``, where N is the non-embedding parameter
count, V * d the lm_head (the real vocabulary: padded rows are not model FLOPs) and the last
term the attention score and value matmuls. MFU is per GPU: tokens/s of one GPU over its peak.
"""

from __future__ import annotations

import torch

from qat_sweep.model.presets import ModelConfig

# Dense BF16 tensor-core peaks (no sparsity), matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS: dict[str, float] = {"A100": 312e12, "H100": 989e12, "H200": 989e12}
# H100 PCIe/NVL have lower peaks that are not tabled: MFU unknown rather than wrong.
_UNTABLED_VARIANTS = ("H100 PCIe", "H100 NVL")


def flops_per_token(model: ModelConfig, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs per token: 6 (N + V d) + 12 L T d (see the module docstring)."""
    d = model.hidden_size
    return 6.0 * (model.n_params + vocab_size * d) + 12.0 * model.n_layers * seq_len * d


def peak_flops(device: torch.device) -> float | None:
    """The device's dense BF16 peak, or None when it is not in the table (MFU then null)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if any(variant in name for variant in _UNTABLED_VARIANTS):
        return None
    return next((peak for marker, peak in PEAK_BF16_FLOPS.items() if marker in name), None)


def mfu(
    tokens_per_s: float, flops_token: float, peak: float | None, world_size: int = 1
) -> float | None:
    """Model FLOPs utilisation per GPU from the global token rate of ``world_size`` GPUs."""
    if not peak:
        return None
    return tokens_per_s * flops_token / (peak * world_size)
