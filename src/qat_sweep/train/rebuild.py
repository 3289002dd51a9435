"""A parent's lost branch checkpoint, rebuilt: its own config rerun from its latest readable
earlier checkpoint (or from its start) to the branch step, in a scratch directory beside the
kept ones, then published whole with one rename. The parent's record, metrics log and own
checkpoints are only read.

The config is the one in the parent's record (`config`, the whole resolved config its trainer
ran), not one composed again from overrides: a child knows only its parent's run key, and
overrides composed today could resolve otherwise than the defaults the parent trained with;
the record's run key is checked against the parent's all the same. The rerun runs in the
child's processes, so it takes the child's execution keys (`train.parallelism`, micro-batches,
device...); its result is bit for bit the parent's where the two execute alike.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from qat_sweep.common import fsync_dir, write_atomic
from qat_sweep.config.compose import EXECUTION_TRAIN_KEYS, run_key
from qat_sweep.config.typed import typed_tree
from qat_sweep.record import (
    BRANCH_DIR,
    METRICS_NAME,
    branch_checkpoint_path,
    metrics_rows,
    read_record,
)
from qat_sweep.train.checkpoint import (
    BRANCH_METRICS,
    checkpoint_dir,
    checkpoint_problem,
    complete_checkpoints,
)
from qat_sweep.train.tracking import metrics_until


@dataclass(frozen=True)
class RebuildSource:
    """A readable checkpoint of the parent at ``step`` (<= the branch step) and the metrics
    rows up to it, as the parent had logged them when it saved there."""

    step: int
    path: Path
    metrics: str


def parent_passed(parent_dir: Path, step: int) -> bool:
    """Whether the parent went past ``step``: it completed, or logged a later step."""
    record = read_record(parent_dir)
    if record is not None and record["status"] == "completed":
        return True
    path = Path(parent_dir) / METRICS_NAME
    text = path.read_text(errors="replace") if path.exists() else ""
    return any(row["step"] > step for _, row in metrics_rows(path, text))


def parent_config(parent_dir: Path, parent: str, step: int, child: DictConfig) -> DictConfig | None:
    """The parent's own config from its record (None without one), rerun as a rebuild in the
    child's processes: with the child's execution (``train.parallelism``, micro-batches,
    device...: the parent's may not fit this process group), keeping only the branch point at
    ``step``, saving nothing else and logging to no wandb run."""
    record = read_record(parent_dir)
    if record is None or not record.get("config"):
        return None
    config = typed_tree(record["config"])
    if run_key(config) != parent:
        raise ValueError(
            f"the record in {parent_dir} holds the config of run {run_key(config)}, not {parent}"
        )
    child_train = OmegaConf.to_container(child.train, resolve=True, enum_to_str=True)
    execution = {k: v for k, v in child_train.items() if k in EXECUTION_TRAIN_KEYS}
    config["train"] = {**config["train"], **execution}
    saves = {"branch_steps": [step], "every_minutes": 0.0, "every_steps": 0, "keep": 1}
    config["checkpoint"] = {**config["checkpoint"], **saves}
    config["logger"] = {**config["logger"], "wandb": {**config["logger"]["wandb"]}}
    config["logger"]["wandb"]["mode"] = "disabled"  # a rebuild is no run of its own
    cfg = OmegaConf.create(config)
    OmegaConf.set_struct(cfg, True)
    return cfg


def rebuild_source(parent_dir: Path, step: int) -> RebuildSource | None:
    """The parent's newest readable checkpoint before ``step``: a kept branch checkpoint
    (before it) or one of its own (at or before it); None: rebuild from the start."""
    kept = (Path(parent_dir) / BRANCH_DIR).glob("step-*")
    branch = [(_step_of(p), p) for p in kept if p.is_dir() and 0 <= _step_of(p) < step]
    own = [(_step_of(p), p) for p in complete_checkpoints(parent_dir) if _step_of(p) <= step]
    for at, path in sorted([*branch, *own], key=lambda found: found[0], reverse=True):
        if checkpoint_problem(path) is None:
            metrics = path / BRANCH_METRICS
            rows = metrics.read_text() if metrics.exists() else metrics_until(parent_dir, at)
            return RebuildSource(at, path, rows)
    return None


def _step_of(path: Path) -> int:
    """The step of a ``step-N`` directory; -1 for any other name (a scratch run, a .tmp)."""
    name = path.name.removeprefix("step-")
    return int(name) if name.isdigit() else -1


def scratch_dir(parent_dir: Path, step: int) -> Path:
    """Where the parent is rerun to ``step``: a run directory of its own, beside the kept ones."""
    path = branch_checkpoint_path(parent_dir, step)
    return path.with_name(f"{path.name}.rebuild")


def rebuild_lock_path(parent_dir: Path, step: int) -> Path:
    """One rebuild of a branch point at a time (the children that need it wait)."""
    path = branch_checkpoint_path(parent_dir, step)
    return path.with_name(f"{path.name}.rebuild.lock")


def stage(scratch: Path, source: RebuildSource | None) -> None:
    """A fresh scratch run directory holding ``source`` as its checkpoint (hard links) and its
    metrics rows, so the rerun resumes there as the parent resumed; empty without a source."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if source is not None:
        target = checkpoint_dir(scratch, source.step)
        target.parent.mkdir()
        shutil.copytree(source.path, target, copy_function=os.link)
        (target / BRANCH_METRICS).unlink(missing_ok=True)  # the rows go to the run's log
        write_atomic(scratch / METRICS_NAME, source.metrics)


def publish(scratch: Path, parent_dir: Path, step: int) -> Path:
    """Put the branch checkpoint the scratch run kept in the parent's place, whole; the scratch
    run's other files go."""
    final = branch_checkpoint_path(parent_dir, step)
    os.replace(branch_checkpoint_path(scratch, step), final)
    fsync_dir(final.parent)
    shutil.rmtree(scratch, ignore_errors=True)
    return final
