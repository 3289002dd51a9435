"""A run's step arithmetic from its resolved config, torch-free: plan derives branch points
with it, and the trainer runs its schedule with the same numbers.

Steps count optimizer steps; step ``s`` is the (s+1)-th update (the LR multiplier of step 0 is
the first one applied). A checkpoint "at step s" holds the state after ``s`` updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qat_sweep.common import parse_tokens


@dataclass(frozen=True)
class RunSteps:
    """Total, warm-up, WSD decay start (None under cosine) and the first quantized step."""

    total: int
    warmup: int
    decay_start: int | None
    quant_start: int
    tokens_per_step: int


def decay_start(total: int, warmup: int, decay_fraction: float) -> int:
    """First step of a WSD decay: the last ``decay_fraction`` of the steps, never inside the
    warm-up. A fraction of 0 decays nowhere (a trunk): the decay starts at ``total``."""
    return max(warmup, int(total * (1 - decay_fraction)))


def quant_start(total: int, start_fraction: float) -> int:
    """First quantized step of a run that trains in BF16 for ``start_fraction`` of its steps."""
    return int(total * start_fraction)


def run_steps(config: Mapping[str, Any]) -> RunSteps:
    """The steps of a resolved, checked config (tokens >= one global batch)."""
    optim = config["optim"]
    tokens_per_step = int(optim["batch_seqs"]) * int(config["train"]["seq_len"])
    total = parse_tokens(config["tokens"]) // tokens_per_step
    warmup = min(int(optim["warmup_steps"]), max(1, int(optim["warmup_max_fraction"] * total)))
    decay = (
        decay_start(total, warmup, float(optim["decay_fraction"]))
        if optim["schedule"] == "wsd"
        else None
    )
    start = quant_start(total, float(config["quant"].get("start_fraction") or 0.0))
    return RunSteps(total, warmup, decay, start, tokens_per_step)


def own_fraction(config: Mapping[str, Any]) -> float:
    """The part of a run's steps it trains itself: those after its branch step (a branched run
    starts from its parent's checkpoint), else all of them."""
    branch = config.get("branch") or {}
    if not branch.get("parent"):
        return 1.0
    return 1.0 - int(branch["step"]) / run_steps(config).total
