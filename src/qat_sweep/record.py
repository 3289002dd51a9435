"""The run directory's layout and its run record (`result.json`), the system of record of a run.

Every name inside `<paths.runs>/<sweep>/<run_key>/` and its sweep directory is spelled here
once; run directories on disk depend on these values, so they never change.

The record is written atomically. A run counts as done only when a valid record with status `completed`
exists; anything else (no file, a half-written file, a failed run) means the run is not done.

Beyond REQUIRED_KEYS a record carries `twin_key` (its BF16 twin's run_key), `subgrid` and
`holdout` (its place in the sweep's plan; null / false for a run trained outside a plan) and
`finished`; readers treat them as optional, as records written before them lack them.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
RUNS_ROOT = "runs"  # conf/train.yaml's paths.runs: where commands look when none is given
# In a run directory:
RECORD_NAME = "result.json"  # the run record
METRICS_NAME = "metrics.jsonl"  # one JSON row per logged step, appended by the trainer
CHECKPOINT_DIR = "checkpoint"  # complete checkpoints of the run (train/checkpoint.py)
CORRUPT_DIR = "checkpoint-corrupt"  # unreadable checkpoints, moved aside for inspection
RUN_LOCK = ".trainer.lock"  # one trainer per run directory (locks.py)
# In a sweep directory:
LAUNCHES_DIR = ".launches"  # what launches wrote: a manifest per launch, the lock, local logs
LAUNCH_LOCK = "launch.lock"  # in LAUNCHES_DIR: one launch per sweep (locks.py)
LAUNCH_LOGS = "logs"  # in LAUNCHES_DIR: output of locally launched runs
SUBMITIT_DIR = ".submitit"  # submitit's job files, unless the launch profile names a folder
# A run's grid coordinates, named alike in plan rows, records and the analysis table
# (`config.identity_fields` derives them from a config; the table reads them from records).
IDENTITY_FIELDS = ("model", "n_params", "hidden_size", "tokens", "scheme", "format", "group_size")
IDENTITY_FIELDS += ("lr", "seed")
RECORD_STATUSES = ("completed", "failed", "diverged")
REQUIRED_KEYS = (
    "schema",
    "run_key",
    "sweep",
    "status",
    "error",
    "model",
    "n_params",
    "n_params_total",
    "hidden_size",
    "tokens",
    "scheme",
    "format",
    "group_size",
    "lr",
    "seed",
    "loss",
    "val_loss",
    "metrics",
    "config",
    "versions",
    "slurm",
    "wandb",
)


def sweep_dir(runs_root: Path | str, sweep: str) -> Path:
    """`<paths.runs>/<sweep>/`: one directory per run below it, named by its run_key."""
    return Path(runs_root) / str(sweep)


def launches_dir(sweep_dir: Path) -> Path:
    """Where launches of a sweep leave their manifests (file names sort by time) and lock."""
    return Path(sweep_dir) / LAUNCHES_DIR


def record_problems(record: Any) -> list[str]:
    """What makes `record` not a valid run record (empty list: valid)."""
    if not isinstance(record, dict):
        return ["record is not a JSON object"]
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in record]
    if record.get("schema") != SCHEMA:
        problems.append(f"schema {record.get('schema')!r} != {SCHEMA}")
    if record.get("status") not in RECORD_STATUSES:
        problems.append(f"status {record.get('status')!r} not in {RECORD_STATUSES}")
    if record.get("status") == "completed":
        loss = record.get("loss")
        if not isinstance(loss, int | float) or not math.isfinite(loss):
            problems.append(f"completed run with non-finite loss {loss!r}")
        if record.get("error") is not None:
            problems.append("completed run with an error message")
    return problems


def read_record(run_dir: Path) -> dict | None:
    """The valid record in `run_dir`, or None when there is none (missing, corrupt, invalid)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return None if record_problems(record) else record


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def software_versions() -> dict[str, str | None]:
    """Code and package versions, so a fit can tell which runs share a code base."""
    versions: dict[str, str | None] = {"git_sha": _git_sha(), "python": platform.python_version()}
    for package in ("qat-sweep", "torch", "hydra-core", "omegaconf", "submitit", "wandb", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def unreadable_record(run_dir: Path) -> str | None:
    """Why `run_dir` has a result.json that is not a valid record (None: absent or valid)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{path} is unreadable ({e}); it will be rerun"
    problems = record_problems(record)
    return (
        f"{path} is not a valid record ({'; '.join(problems)}); it will be rerun"
        if problems
        else None
    )
