"""Metrics of a run: `metrics.jsonl` in the run directory always, wandb as a mirror.

wandb never fails a run: any wandb error is reported once as a warning and logging goes on
into `metrics.jsonl`, which is what the analysis reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"
_WANDB_FORBIDDEN = re.compile(r"[:;,#?/'\s]")


def wandb_id(sweep: str, run_key: str) -> str:
    """A wandb run id from the run identity, with only characters wandb accepts (<= 64)."""
    return _WANDB_FORBIDDEN.sub("-", f"{sweep}-{run_key}")[-64:]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop lines logged after `last_step`: a resumed run logs those steps again."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed process
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def resolve_wandb_mode(mode: str) -> str:
    """`auto`: online with credentials, else offline with a warning (NOTES.md: init fails)."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()
    if not has_key:
        warnings.warn("no wandb API key found: logging wandb offline", stacklevel=2)
        return "offline"
    return "online"


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


class Tracker:
    """Appends metric rows to metrics.jsonl and mirrors them to a wandb run."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        wandb_settings: dict[str, Any],
        wandb_init: dict[str, Any],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_run = None
        self.wandb_info: dict[str, Any] | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_NAME, "a")  # noqa: SIM115 (closed in finish)
        mode = resolve_wandb_mode(str(wandb_settings.get("mode", "auto")))
        if mode != "disabled":
            self._start_wandb(mode, wandb_settings, wandb_init)

    def _start_wandb(self, mode: str, settings: dict[str, Any], init: dict[str, Any]) -> None:
        try:
            import wandb

            self.wandb_run = wandb.init(
                mode=mode,
                project=settings.get("project") or "qat-sweep",
                entity=settings.get("entity"),
                dir=str(self.run_dir),
                resume="allow",
                reinit="finish_previous",
                **init,
            )
            self.wandb_run.define_metric("tokens")
            self.wandb_run.define_metric("*", step_metric="tokens")
            self.wandb_info = {
                "id": self.wandb_run.id,
                "project": self.wandb_run.project,
                "mode": mode,
                "dir": str(Path(self.wandb_run.dir).parent),
            }
        except Exception as exc:  # a wandb failure never fails a run
            warnings.warn(f"wandb disabled for this run: {exc}", stacklevel=2)
            self.wandb_run = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = _clean(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            try:
                self.wandb_run.log({k: v for k, v in row.items() if isinstance(v, int | float)})
            except Exception as exc:
                warnings.warn(f"wandb log failed, continuing without it: {exc}", stacklevel=2)
                self.wandb_run = None

    def finish(self, summary: dict[str, Any], exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(_clean(summary))
                self.wandb_run.finish(exit_code=exit_code)
            except Exception as exc:
                warnings.warn(f"wandb finish failed: {exc}", stacklevel=2)
