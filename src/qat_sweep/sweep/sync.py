"""`qat-sweep sync sweep=NAME`: put a sweep's offline runs on the wandb server, then make every
run's summary agree with the run records (the system of record).

Compute nodes often log offline. From a login node this uploads every offline run of the sweep
not yet uploaded (wandb's own `wandb sync`: it marks what it uploaded, so a second call uploads
nothing), then writes `final/*` (with `final/delta` for each quantized run whose BF16 twin has
completed) and, when the sweep has been fitted, `fit/predicted_delta` and `fit/residual` into
each run's summary through the public API. `--dry-run` shows all of it and contacts no server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qat_sweep.train.tracking import final_summary, twin_record


class SyncError(ValueError):
    """Bad input for `sync`: exit code 2 with this message."""


def offline_files(directory: Path) -> list[Path]:
    """The `.wandb` files of every offline run (and resumed fragment) in `directory/wandb`
    (a fit output directory) or in `directory/*/wandb` (a sweep's run directories)."""
    patterns = ("wandb/offline-run-*/run-*.wandb", "*/wandb/offline-run-*/run-*.wandb")
    return sorted(f for pattern in patterns for f in Path(directory).glob(pattern))


def is_uploaded(wandb_file: Path) -> bool:
    """wandb's own marker: `wandb sync` writes `<file>.synced` next to what it uploaded."""
    return wandb_file.with_name(wandb_file.name + ".synced").exists()


def summary_updates(
    records: list[dict[str, Any]], sweep_dir: Path, predictions: dict[str, dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """run_key -> summary values for every record that has a wandb run."""
    updates = {}
    for record in records:
        if not (record.get("wandb") or {}).get("id"):
            continue  # wandb was disabled (or failed) for this run: nothing to update
        values = final_summary(record, twin_record(record, sweep_dir))
        updates[record["run_key"]] = values | predictions.get(record["run_key"], {})
    return updates
