"""The trainer's mutable state in one object, saved and restored whole with each checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from qat_sweep.train.checkpoint import rng_state, set_rng_state
from qat_sweep.train.recipe import SmoothedLoss


@dataclass
class TrainState:
    """Step, smoothed loss, wall clock and RNG (checkpointed); throughput window (per try).

    ``state_dict()`` is the checkpoint's ``train_state.pt``: run_key, step, smoothed
    (value, weight), rng and wall_s, the format resumes have always read, and branched_from.
    """

    run_key: str
    smoothed: SmoothedLoss
    step: int = 0
    wall_before: float = 0.0  # wall seconds of the earlier tries of this run
    started: float = field(default_factory=time.perf_counter)
    last_loss: float = float("nan")
    tokens_per_s: float = float("nan")
    window_start: float = field(default_factory=time.perf_counter)
    window_tokens: int = 0
    last_save: float = field(default_factory=time.monotonic)
    branched_from: dict[str, Any] | None = None  # the parent and step this run started from

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "step": self.step,
            "smoothed": (self.smoothed.value, self.smoothed.weight),
            "rng": rng_state(),
            "wall_s": self.wall_s(),
            "branched_from": self.branched_from,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's train state, its RNG included."""
        self.smoothed.value, self.smoothed.weight = state["smoothed"]
        self.step, self.wall_before = state["step"], state["wall_s"]
        set_rng_state(state["rng"])
        if state["run_key"] == self.run_key:  # a parent's checkpoint says where the parent began
            self.branched_from = state.get("branched_from")

    def end_window(self) -> float:
        """Tokens per second since the last progress row; starts the next window."""
        now = time.perf_counter()
        self.tokens_per_s = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, 0
        return self.tokens_per_s
