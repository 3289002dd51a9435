"""The training recipe (docs/science.md): LR schedules, AdamW groups, the optimizer step
(gradient accumulation over micro-batches), the smoothed loss and the evaluation loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor

from qat_sweep.model.layers import is_quantizer_param
from qat_sweep.model.transformer import RMSNorm
from qat_sweep.train.distributed import full_norm, no_grad_sync


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


def make_optimizer(
    model: torch.nn.Module, optim: DictConfig, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW with weight decay on the linear weights (block linears and lm_head), and on the
    RMSNorm gains with ``optim.decay_norms`` (OLMo-2's decay_norm_and_bias); never on the
    embedding (OLMo-2 neither) or a quantizer's learned factors (LAC, LSQ, LWC), whose decay
    would pull them to an arbitrary point of their parametrisation.

    The fused kernel on CUDA (one launch for all parameters), the foreach one elsewhere; both
    compute the same update. ``fused`` overrides the choice.
    """
    norms = {id(p) for m in model.modules() if isinstance(m, RMSNorm) for p in m.parameters()}
    decay_norms = bool(optim.decay_norms)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim >= 2 and "embed" not in name and not is_quantizer_param(name)
        decayed = is_matrix or (decay_norms and id(param) in norms)
        (decay if decayed else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(optim.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if fused is None:
        fused = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(
        groups,
        lr=float(optim.lr),
        betas=tuple(optim.betas),
        eps=float(optim.eps),
        fused=fused,
        foreach=not fused,
    )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    *,
    grad_clip: float,
    autocast: bool,
    wrapped: torch.nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer step over a rank's micro-batches; the mean loss and the gradient norm.

    Both come back as device tensors: reading them is the caller's (rare) host sync.
    ``wrapped`` is the module the forward goes through (DDP, or the model itself); DDP
    all-reduces gradients on the last micro-batch only.
    """
    forward = wrapped or model
    n_micro = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for m, (x, y) in enumerate(micro_batches):
        sync = no_grad_sync(forward, m == n_micro - 1)
        with sync, torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = forward(x, y) / n_micro
            loss.backward()
        loss_sum += loss.detach()
    grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


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


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, batches: list, device: str, autocast: bool, micro: int | None = None
) -> float:
    """Mean loss over the batches, each run in equal chunks of ``micro`` sequences (same mean)."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        for xs, ys in zip(x.split(micro or len(x)), y.split(micro or len(y)), strict=True):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                losses.append(float(model(xs.to(device), ys.to(device))))
    model.train(was_training)
    return sum(losses) / len(losses)
