"""The run directory's layout and its run record (`result.json`), the system of record of a run.

Every name inside `<paths.runs>/<sweep>/<run_key>/` and its sweep directory is spelled here
once; run directories on disk depend on these values, so they never change.

The record is written atomically. A run counts as done only when a valid record with status
`completed` exists; anything else (no file, a half-written file, a failed run) means the run is
not done. Every reader goes through `load_record` (one run) or `sweep_records` (a sweep), so
the trainer, status, launch, sync, wandb and the fit agree on which records count.

Beyond REQUIRED_KEYS a record carries `twin_key` (its BF16 twin's run_key), `subgrid` and
`holdout` (its place in the sweep's plan; null / false for a run trained outside a plan),
`execution` (how a completed run computed, `delta.EXECUTION_FIELDS`) and
`finished`; readers treat them as optional, as records written before them lack them.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from qat_sweep.common import format_count

SCHEMA = 1
RUNS_ROOT = "runs"  # conf/train.yaml's paths.runs: where commands look when none is given
# In a run directory:
RECORD_NAME = "result.json"  # the run record
METRICS_NAME = "metrics.jsonl"  # one JSON row per logged step, appended by the trainer
CHECKPOINT_DIR = "checkpoint"  # complete checkpoints of the run (train/checkpoint.py)
CORRUPT_DIR = "checkpoint-corrupt"  # unreadable checkpoints, moved aside for inspection
BRANCH_DIR = "branch-checkpoint"  # whole checkpoints at the steps other runs branch from
RUN_LOCK = ".trainer.lock"  # one trainer per run directory (locks.py)
# In a sweep directory:
LAUNCHES_DIR = ".launches"  # what launches wrote: a manifest per launch, the lock, local logs
LAUNCH_LOCK = "launch.lock"  # in LAUNCHES_DIR: one launch per sweep (locks.py)
LAUNCH_LOGS = "logs"  # in LAUNCHES_DIR: output of locally launched runs
SUBMITIT_DIR = ".submitit"  # submitit's job files, unless the launch profile names a folder
# A run's grid coordinates, named alike in plan rows, records and the analysis table
# (`config.identity_fields` derives them from a config; the table reads them from records).
IDENTITY_FIELDS = ("model", "n_params", "hidden_size", "tokens", "scheme", "format", "group_size")
IDENTITY_FIELDS += ("lr", "seed", "start_fraction")
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


def name_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot name a directory below its root (sweep_name, run_key), or None: a
    name with a path separator or a dot name would put the runs outside `paths.runs`."""
    text = str(value)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        return (
            f"{key}={text!r}: must be a name (letters, digits, '.', '_', '-'), not a path: "
            f"no '/' and not '.' or '..'; the directory goes below paths.runs"
        )
    return None


# Numeric columns of a metrics row that readers compute with (status, resume).
_METRIC_NUMBERS = ("loss", "loss_smoothed", "tokens", "tokens_per_s", "val_loss", "lr")


def metrics_row_problem(row: Any) -> str | None:
    """Why one parsed line of metrics.jsonl is no row a reader can use (None: it is one)."""
    if not isinstance(row, dict):
        return f"not a JSON object but {type(row).__name__}"
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step {step!r} is not a whole number >= 0"
    for key in _METRIC_NUMBERS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key} {value!r} is not a number"
    return None


def metrics_rows(
    path: Path, text: str, first_line: Callable[[], int] = lambda: 1
) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of each usable row in ``text``, lines ``first_line()``... of metrics log
    ``path`` (a callable: a tail's line numbers are counted only to name a bad row). A torn last line (a killed writer) is dropped quietly; any other malformed row is
    skipped with a warning naming the file and line, so one bad row never blocks a resume or
    the status of a sweep."""
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                continue
            problem: str | None = "not valid JSON"
        else:
            problem = metrics_row_problem(row)
        if problem is None:
            rows.append((line, row))
        else:
            print(
                f"[qat-sweep] warning: {path}, line {first_line() + i}: {problem}; row skipped",
                file=sys.stderr,
            )
    return rows


def sweep_dir(runs_root: Path | str, sweep: str) -> Path:
    """`<paths.runs>/<sweep>/`: one directory per run below it, named by its run_key."""
    return Path(runs_root) / str(sweep)


def branch_checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where a run keeps its checkpoint at ``step`` whole for the runs that branch there."""
    return Path(run_dir) / BRANCH_DIR / f"step-{step:09d}"


def branch_release_path(run_dir: Path, step: int) -> Path:
    """Job ids of the held SLURM jobs that may start once the run passes ``step``."""
    return Path(run_dir) / BRANCH_DIR / f"release-{step:09d}.jobs"


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


@dataclass(frozen=True)
class RunRecord:
    """What a run directory's record file holds: a valid record, or why it is not one."""

    run_dir: Path
    record: dict[str, Any] | None  # the valid record; None when absent or not valid
    problem: str | None = None  # why the file is no valid record ("unreadable (...)", ...)

    @property
    def path(self) -> Path:
        return self.run_dir / RECORD_NAME


# A trainer's run_key, `<model>_D<tokens>_<scheme>[_<format>_g<G>]_lr<lr>_s<seed>_<hash6>`
# (config.run_key): its readable part names the grid point the record must describe.
_RUN_KEY = re.compile(
    r"(?P<model>.+?)_D(?P<tokens>[^_]+)_(?P<scheme>[^_]+)_.*_s(?P<seed>-?\d+)_[0-9a-f]{6}"
)


def ownership_problems(record: dict[str, Any], run_dir: Path) -> list[str]:
    """Why a valid record does not prove the run of `run_dir` (empty list: it does): a record
    copied, restored or edited into another run's directory must not count as that run."""
    key, name = record["run_key"], Path(run_dir).name
    if key != name:
        return [f"the record of run {key!r}, not of this directory's run {name!r}"]
    match = _RUN_KEY.fullmatch(str(key))
    if match is None or record["status"] != "completed":
        return []  # a key written by hand (no readable part), or a failure's partial fields
    found = {"model": record["model"], "scheme": record["scheme"], "seed": str(record["seed"])}
    tokens = record["tokens"]
    found["tokens"] = format_count(tokens) if isinstance(tokens, int | float) else str(tokens)
    return [
        f"its {field}={value!r} is not the run_key's {match[field]!r}"
        for field, value in found.items()
        if value != match[field]
    ]


def load_record(run_dir: Path) -> RunRecord:
    """The record file of `run_dir`, checked once here for every reader (record_problems), and
    shown to be this directory's run (ownership_problems)."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / RECORD_NAME).read_text())
    except FileNotFoundError:
        return RunRecord(run_dir, None)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return RunRecord(run_dir, None, f"unreadable ({e})")
    if problems := record_problems(record):
        return RunRecord(run_dir, None, f"not a valid record ({'; '.join(problems)})")
    if problems := ownership_problems(record, run_dir):
        return RunRecord(run_dir, None, f"not this run's record ({'; '.join(problems)})")
    return RunRecord(run_dir, record)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The valid record in `run_dir`, or None when there is none (missing, corrupt, invalid)."""
    return load_record(run_dir).record


def sweep_records(sweep_dir: Path) -> list[RunRecord]:
    """Every run directory of a sweep that holds a record file, valid or not, by run_key."""
    return [load_record(path.parent) for path in sorted(Path(sweep_dir).glob(f"*/{RECORD_NAME}"))]


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
