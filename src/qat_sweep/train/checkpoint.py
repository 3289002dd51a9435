"""Checkpoints that survive anything: sharded, complete-or-absent, checked before they are trusted.

Layout: ``<run>/checkpoint/step-000000123/`` holds a torch.distributed.checkpoint (DCP) of the
model and optimizer (each rank writes its own shard under FSDP; replicated DDP tensors are
written once) plus ``train_state.pt`` (step, smoothed loss, RNG, wall time). A checkpoint is
written under ``step-N.tmp`` and renamed when every rank is done, so a directory without the
suffix is complete; the newest ``checkpoint.keep`` of them are kept. Loading fills the tensors
the model and optimizer already own, one stored item at a time, so a resuming rank holds its
shard plus one tensor beyond what it built. A checkpoint that cannot be read is moved to
``<run>/checkpoint-corrupt/`` (kept for inspection) and the next older one is tried.

At a step another run branches from, the checkpoint is also kept whole under
``<run>/branch-checkpoint/step-N/`` (hard links, never rotated or removed with the run's own),
with the metrics rows up to that step, so the branch starts exactly where this run was. One
that is lost or cannot be read is rebuilt by the child that needs it (train/rebuild.py).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from qat_sweep.common import atomic_open, fsync_dir
from qat_sweep.record import CHECKPOINT_DIR, CORRUPT_DIR, branch_checkpoint_path
from qat_sweep.train.distributed import DistInfo, any_rank, barrier

TRAIN_STATE = "train_state.pt"
BRANCH_METRICS = "metrics.jsonl"  # in a branch checkpoint: the parent's rows up to its step
_STEP_DIR = re.compile(r"step-(\d+)")
# DCP warns that a process without a process group saves alone: that is the intent here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    # A run may resume on another number of GPUs: then the CUDA streams start afresh.
    if "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, newest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    info: DistInfo,
    keep: int = 2,
) -> Path:
    """Every rank writes its part; rank 0 writes the train state, renames, prunes old ones."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if final.exists():  # this step is already saved (a signal right after a periodic save)
        return final
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optim_state},
        checkpoint_id=tmp,
        no_dist=not dist.is_initialized(),
    )
    if info.is_main:
        with atomic_open(tmp / TRAIN_STATE, "wb") as f:
            torch.save(train_state, f)
        os.replace(tmp, final)  # the step directory appears whole, or not at all
        fsync_dir(final.parent)
        for old in complete_checkpoints(run_dir)[max(1, keep) :]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in final.parent.glob("step-*.tmp"):  # saves killed half-way (one trainer here)
            shutil.rmtree(stale, ignore_errors=True)
    barrier(info)
    return final


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted (unreadable or truncated file), or None."""
    try:
        torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=False)
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # unpickling a torn file raises anything
        return f"{type(exc).__name__}: {exc}"
    needed: dict[str, int] = {}
    for item in (metadata.storage_data or {}).values():
        needed[item.relative_path] = max(
            needed.get(item.relative_path, 0), item.offset + item.length
        )
    for name, size in sorted(needed.items()):
        file = path / name
        have = file.stat().st_size if file.exists() else None
        if have is None or have < size:
            return f"{file} holds {have or 0} bytes, the checkpoint's index needs {size}"
    return None


def _load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Fill model and optimizer from ``path``. Quantizer parameters the checkpoint lacks (a
    BF16 parent's, or a run saved before its quantization started) keep their initial values
    and get no optimizer state, as in a run that never stepped them."""
    model_state, optim_state = get_state_dict(model, optimizer)  # the tensors to fill in place
    state = {"model": model_state, "optimizer": optim_state}
    stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    dcp.load(
        state,
        checkpoint_id=path,
        planner=DefaultLoadPlanner(allow_partial_load=True),
        no_dist=not dist.is_initialized(),
    )
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    for name, param in model.named_parameters():
        if f"optimizer.state.{name}.step" not in stored:
            optimizer.state.pop(param, None)
    return torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=False)


def _move_aside(path: Path, run_dir: Path, problem: str | None, info: DistInfo) -> str:
    """Move an unreadable checkpoint to the run's ``checkpoint-corrupt/``; where it went."""
    aside = run_dir / CORRUPT_DIR / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if info.is_main:
        aside.parent.mkdir(parents=True, exist_ok=True)
        first, again = aside, 0
        while aside.exists():  # the same step moved aside twice in one second (rebuilds)
            again += 1
            aside = first.with_name(f"{first.name}.{again}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another child of the same parent moved it first
            aside = path.with_name(f"{path.name} (moved aside by another run)")
        print(
            f"[qat-sweep] warning: checkpoint {path} cannot be read ({problem or 'on a rank'}); "
            f"moved to {aside}",
            file=sys.stderr,
        )
    barrier(info)
    return str(aside)


def load_latest(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> tuple[dict[str, Any] | None, list[str]]:
    """Load the newest readable checkpoint into model and optimizer: (train state, moved aside).

    Unreadable checkpoints are moved to ``checkpoint-corrupt/`` and named in the returned
    list; (None, moved) means start from scratch. All ranks take the same decision.
    """
    moved: list[str] = []
    for path in complete_checkpoints(run_dir):
        problem = checkpoint_problem(path)
        if not any_rank(problem is not None, info):
            return _load(path, model, optimizer), moved
        moved.append(_move_aside(path, Path(run_dir), problem, info))
    if moved and info.is_main:
        print(
            f"[qat-sweep] warning: no readable checkpoint left in {run_dir}: training from scratch",
            file=sys.stderr,
        )
    return None, moved


def keep_for_branches(run_dir: Path, step: int, metrics_rows: str) -> Path:
    """Keep the complete checkpoint at ``step`` whole for the runs that branch there, with the
    metrics rows logged up to it (rank 0; the checkpoint was just saved)."""
    final = branch_checkpoint_path(run_dir, step)
    if final.exists():
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # Hard links: no copy of the shards, and removing the run's own checkpoint keeps these.
    shutil.copytree(checkpoint_dir(run_dir, step), tmp, copy_function=os.link)
    with atomic_open(tmp / BRANCH_METRICS, "w") as f:
        f.write(metrics_rows)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


class BranchLoad(NamedTuple):
    """A parent's branch checkpoint loaded (its train state), or why not and where it went."""

    state: dict[str, Any] | None
    problem: str | None = None  # absent, or why it cannot be read
    moved_to: str | None = None  # an unreadable one, in the parent's checkpoint-corrupt/


def load_branch(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> BranchLoad:
    """Load a parent's branch checkpoint into this run's model and optimizer; an unreadable
    one is moved to the parent's checkpoint-corrupt/."""
    if any_rank(not path.is_dir(), info):
        return BranchLoad(None, f"{path} is not there")
    problem = checkpoint_problem(path)
    if not any_rank(problem is not None, info):
        return BranchLoad(_load(path, model, optimizer))
    problem = problem or "unreadable on a rank"
    return BranchLoad(None, problem, _move_aside(path, path.parents[1], problem, info))


def remove_checkpoint(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)
