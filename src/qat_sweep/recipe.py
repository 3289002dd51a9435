"""The training recipe of PAPER.md section 3: LR schedules, AdamW groups, the smoothed loss."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig


def lr_multiplier(step: int, total: int, warmup: int, optim: DictConfig) -> float:
    """Linear warm-up, then cosine (or WSD: flat, then linear decay) down to min_lr_ratio."""
    floor = float(optim.min_lr_ratio)
    if step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "wsd":
        decay_start = max(warmup, int(total * (1 - float(optim.decay_fraction))))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, total - 1 - decay_start)
        return 1.0 - (1.0 - floor) * min(1.0, progress)
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, optim: DictConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the linear weights only (not on norms and embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim >= 2 and "embed" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(optim.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=float(optim.lr), betas=tuple(optim.betas), eps=float(optim.eps), fused=False
    )


class SmoothedLoss:
    """Bias-corrected EMA of the per-step training loss (the paper's smoothed final loss)."""

    def __init__(self, window: int, value: float = 0.0, weight: float = 0.0) -> None:
        self.beta = 1.0 - 1.0 / window
        self.value, self.weight = value, weight

    def update(self, loss: float) -> float:
        self.value = self.beta * self.value + (1.0 - self.beta) * loss
        self.weight = self.beta * self.weight + (1.0 - self.beta)
        return self.get()

    def get(self) -> float:
        return self.value / self.weight if self.weight else float("nan")
