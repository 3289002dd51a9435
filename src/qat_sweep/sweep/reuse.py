"""Reuse of runs another sweep already completed: the same run_key is the same training (the key
leaves out only where a run is filed and how it executes), so a launch copies its record and
metrics instead of paying the GPU-hours again.

The copy is the new run directory's record, with the new sweep's membership and where it came
from (`reused_from`); the source directory is left as it was. Checkpoints and the wandb run stay
with the source: the copy has no wandb run of its own (`wandb` is null), so `sync` leaves the
source's summary alone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from qat_sweep.common import write_json_atomic
from qat_sweep.config.compose import SWEEP_KEY
from qat_sweep.record import METRICS_NAME, RECORD_NAME, load_record
from qat_sweep.sweep.spec import PlannedRun


def completed_elsewhere(run: PlannedRun) -> Path | None:
    """The run directory of a completed run with this run_key in another sweep under the same
    `paths.runs` (the newest when several), or None."""
    own = run.run_dir.parent
    found = []
    for other in own.parent.glob(f"*/{run.run_key}"):
        if other.parent == own:
            continue
        record = load_record(other).record
        if record is not None and record["status"] == "completed" and "reused_from" not in record:
            found.append((str(record.get("finished") or ""), other))
    return max(found)[1] if found else None


def reuse(run: PlannedRun, source: Path) -> dict[str, Any]:
    """Copy ``source``'s record and metrics into ``run``'s (absent) run directory, relabelled for
    this sweep with the provenance; the directory appears whole or not at all."""
    record = load_record(source).record
    assert record is not None  # completed_elsewhere found it valid
    staging = run.run_dir.with_name(f".{run.run_key}.reuse-{os.getpid()}")
    staging.mkdir(parents=True)
    try:
        if (source / METRICS_NAME).is_file():
            shutil.copy2(source / METRICS_NAME, staging / METRICS_NAME)
        membership = {k: run.config[k] for k in ("subgrid", "holdout") if k in run.config}
        config = {**(record.get("config") or {}), SWEEP_KEY: run.config[SWEEP_KEY], **membership}
        copied = {
            **record,
            "sweep": run.config[SWEEP_KEY],
            **membership,
            "config": config,
            "wandb": None,
            "reused_from": {
                "run_dir": str(source.resolve()),
                "sweep": record.get("sweep"),
                "copied": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        write_json_atomic(staging / RECORD_NAME, copied)
        staging.rename(run.run_dir)  # fails if a trainer created the directory meanwhile
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied
