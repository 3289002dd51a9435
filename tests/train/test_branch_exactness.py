"""Runs that branch: a run started from its parent's checkpoint trains, bit for bit, what it
trains from scratch, for QAT after BF16 and for WSD trunks, through interruptions of parent
and child (a run whose record is gone and whose newer checkpoints are gone is a run killed
after its last checkpoint), through a parent's torn branch checkpoint (rebuilt by the child),
on one process and on two DDP ranks."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from support import TINY, finish, metrics_rows, start_ranks, train_rows

from qat_sweep.config.compose import compose_run, run_dir
from qat_sweep.locks import hold
from qat_sweep.record import BRANCH_DIR, CORRUPT_DIR, RECORD_NAME, read_record
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.train.checkpoint import BRANCH_METRICS, checkpoint_problem, complete_checkpoints
from qat_sweep.train.rebuild import rebuild_lock_path
from qat_sweep.train.trainer import train

SWEEP = {
    "overrides": [*TINY, "optim.warmup_steps=2"],
    "subgrids": {
        # BF16 for steps 0-9, then W4A4 with LAC (its clip parameters start at step 10)
        "late": {
            "tokens": 40960,
            "quant": "w4a4",
            "quant.group_size": 32,
            "quant.act_quantizer": "lac",
            "quant.start_fraction": 0.5,
        },
        # WSD at 20 steps decays from step 16: a trunk of 16 flat steps, then the branch
        "wsd": {
            "branch": "tokens",
            "optim": "adamw_wsd",
            "tokens": 40960,
            "quant": "w4a4",
            "quant.group_size": 32,
        },
    },
}
SAVES = ["checkpoint.every_steps=4", "checkpoint.keep=5", "checkpoint.keep_on_success=true"]
# The parent also keeps a branch checkpoint after its own at step 8, before the branch step.
EARLIER = {"late": 9, "wsd": 13}


def interrupt(directory: Path, after_step: int) -> None:
    """As if the run was killed right after its checkpoint at ``after_step`` (0: before any)."""
    (directory / RECORD_NAME).unlink()
    for checkpoint in complete_checkpoints(directory):
        if int(checkpoint.name.split("-")[1]) > after_step:
            shutil.rmtree(checkpoint)


def losses(directory: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["loss_smoothed"], r["lr"]) for r in train_rows(directory)]


def history(branch_checkpoint: Path) -> list[tuple]:
    """What a branch checkpoint's metrics rows give a child (timings and the parent's own
    smoothing aside: the child recomputes it)."""
    keys = ("step", "tokens", "loss", "lr", "grad_norm", "batch_crc", "val_loss")
    text = (branch_checkpoint / BRANCH_METRICS).read_text()
    return [tuple(row.get(k) for k in keys) for row in map(json.loads, text.splitlines())]


def tear(checkpoint: Path) -> None:
    for shard in checkpoint.glob("*.distcp"):  # one per rank that wrote tensors
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def rebuild_elsewhere(kept: Path, good: Path, lock: Path, holding: threading.Event) -> None:
    """Another child rebuilding ``kept``: it holds the lock until this one has moved the torn
    checkpoint aside (and waits for the lock), then puts a good one in place."""
    with hold(lock, "a rebuild in another child"):
        holding.set()
        while kept.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        shutil.copytree(good, kept)


def remove_own_after(directory: Path, step: int) -> None:
    for checkpoint in complete_checkpoints(directory):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("subgrid", ["late", "wsd"])
def test_branched_run_equals_from_scratch_through_interruptions(
    subgrid: str, tmp_path: Path, demo_data: Path
) -> None:
    (tmp_path / "branching.yaml").write_text(yaml.safe_dump({"name": "branching", **SWEEP}))
    runs = plan_sweep(
        str(tmp_path / "branching.yaml"), [f"data.dir={demo_data}"], runs_root=tmp_path / "runs"
    )
    by_key = {r.run_key: r for r in runs}
    (child,) = [r for r in runs if r.subgrid == subgrid]
    parent = by_key[child.parent]
    assert child.branch_step == {"late": 10, "wsd": 16}[subgrid]
    assert parent.subgrid == {"late": "bf16_twins", "wsd": "trunks"}[subgrid]

    scratch_overrides = [o for o in child.overrides if not o.startswith("branch.")]
    scratch = train(compose_run([*scratch_overrides, "sweep_name=scratch"]))
    reference = losses(run_dir(compose_run([*scratch_overrides, "sweep_name=scratch"])))
    assert scratch["status"] == "completed" and len(reference) == 20

    # The parent is killed before the branch step and resumed: it still keeps the branch point.
    earlier = f"checkpoint.branch_steps=[{EARLIER[subgrid]},{child.branch_step}]"
    parent_cfg = compose_run([*parent.overrides, *SAVES, earlier])
    assert train(parent_cfg)["status"] == "completed"
    shutil.rmtree(parent.run_dir / BRANCH_DIR)
    interrupt(parent.run_dir, after_step=8)
    assert train(parent_cfg)["status"] == "completed"
    assert (parent.run_dir / BRANCH_DIR / f"step-{child.branch_step:09d}").is_dir()

    child_cfg = compose_run([*child.overrides, *SAVES])
    record = train(child_cfg)
    assert record["run_key"] == scratch["run_key"]  # branching leaves the identity alone
    branched_from = {"parent": parent.run_key, "step": child.branch_step}
    assert record["metrics"]["branched_from"] == branched_from
    assert losses(child.run_dir) == reference
    assert (record["loss"], record["val_loss"]) == (scratch["loss"], scratch["val_loss"])

    # The child killed after a checkpoint of its own, then before its first one.
    for after_step in (child.branch_step + 2, 0):
        interrupt(child.run_dir, after_step - after_step % 4)
        again = train(child_cfg)
        assert losses(child.run_dir) == reference
        assert (again["loss"], again["val_loss"]) == (scratch["loss"], scratch["val_loss"])
        assert again["metrics"]["branched_from"] == branched_from
    evals = [r["step"] for r in metrics_rows(child.run_dir) if "val_loss" in r]
    assert len(evals) == len(set(evals))  # each evaluation logged once

    # A torn branch checkpoint of a completed parent is moved aside and rebuilt: the parent
    # rerun from its latest readable earlier checkpoint (a kept branch checkpoint, one of its
    # own, none) to the branch step, its record, metrics and own checkpoints left alone.
    kept = parent.run_dir / BRANCH_DIR / f"step-{child.branch_step:09d}"
    kept_history = history(kept)
    untouched = [(parent.run_dir / name).read_bytes() for name in (RECORD_NAME, "metrics.jsonl")]
    for rebuilt_from in (EARLIER[subgrid], 8, 0):
        if rebuilt_from < EARLIER[subgrid]:
            earlier_kept = parent.run_dir / BRANCH_DIR / f"step-{EARLIER[subgrid]:09d}"
            shutil.rmtree(earlier_kept, ignore_errors=True)
        remove_own_after(parent.run_dir, rebuilt_from)
        own = [p.name for p in complete_checkpoints(parent.run_dir)]
        tear(kept)
        shutil.rmtree(child.run_dir)
        again = train(child_cfg)
        assert losses(child.run_dir) == reference
        assert (again["loss"], again["val_loss"]) == (scratch["loss"], scratch["val_loss"])
        assert again["metrics"]["branched_from"] == {
            **branched_from,
            "rebuilt_from_step": rebuilt_from,
        }
        (moved,) = again["metrics"]["corrupt_checkpoints"]
        assert Path(moved).parent == parent.run_dir / CORRUPT_DIR and Path(moved).is_dir()
        assert checkpoint_problem(kept) is None and history(kept) == kept_history
        assert [p.name for p in complete_checkpoints(parent.run_dir)] == own
        assert [
            (parent.run_dir / n).read_bytes() for n in (RECORD_NAME, "metrics.jsonl")
        ] == untouched
    assert len(list((parent.run_dir / CORRUPT_DIR).iterdir())) == 3
    assert sorted(p.name for p in (parent.run_dir / BRANCH_DIR).iterdir()) == [
        kept.name,
        f"{kept.name}.rebuild.lock",
    ]

    # Another child rebuilds it meanwhile: this one waits for the lock and loads that result.
    good = tmp_path / "good-branch-checkpoint"
    shutil.copytree(kept, good)  # a copy, not links: tearing must leave it whole
    tear(kept)
    shutil.rmtree(child.run_dir)
    holding = threading.Event()
    lock = rebuild_lock_path(parent.run_dir, child.branch_step)
    other = threading.Thread(target=rebuild_elsewhere, args=(kept, good, lock, holding))
    other.start()
    holding.wait()
    again = train(child_cfg)
    other.join()
    assert losses(child.run_dir) == reference and again["metrics"]["branched_from"] == branched_from


@pytest.mark.slow
def test_child_waits_for_a_parent_short_of_its_branch_step(tmp_path: Path, demo_data: Path) -> None:
    """No rebuild before the parent has passed the branch step, nor without its config."""
    (tmp_path / "branching.yaml").write_text(yaml.safe_dump({"name": "branching", **SWEEP}))
    runs = plan_sweep(
        str(tmp_path / "branching.yaml"), [f"data.dir={demo_data}"], runs_root=tmp_path / "runs"
    )
    (child,) = [r for r in runs if r.subgrid == "late"]
    child_cfg = compose_run([*child.overrides, *SAVES])
    record = train(child_cfg)  # the parent has not started
    assert (
        record["status"] == "failed" and f"has not kept step {child.branch_step}" in record["error"]
    )

    # The parent passed the branch step (its metrics say so) and was killed: no record yet.
    (parent,) = [r for r in runs if r.run_key == child.parent]
    assert train(compose_run([*parent.overrides, *SAVES]))["status"] == "completed"
    interrupt(parent.run_dir, after_step=12)
    shutil.rmtree(parent.run_dir / BRANCH_DIR)
    shutil.rmtree(child.run_dir)
    record = train(child_cfg)
    assert (
        record["status"] == "failed" and "has no record to rerun its config from" in record["error"]
    )


def train_ddp(overrides: list[str]) -> dict:
    """The run trained by two DDP ranks over gloo; its record."""
    args = [*overrides, "train.parallelism=ddp"]
    outcomes = finish(start_ranks(args))
    assert all(code == 0 for code, _ in outcomes), outcomes[0][1][-3000:]
    return read_record(run_dir(compose_run(args)))


@pytest.mark.slow
def test_branched_ddp_run_equals_ddp_from_scratch(tmp_path: Path, demo_data: Path) -> None:
    """Two DDP ranks branch, and rebuild a torn branch checkpoint, to their from-scratch run."""
    (tmp_path / "branching.yaml").write_text(yaml.safe_dump({"name": "branching", **SWEEP}))
    runs = plan_sweep(
        str(tmp_path / "branching.yaml"), [f"data.dir={demo_data}"], runs_root=tmp_path / "runs"
    )
    (child,) = [r for r in runs if r.subgrid == "late"]
    (parent,) = [r for r in runs if r.run_key == child.parent]
    scratch_overrides = [o for o in child.overrides if not o.startswith("branch.")]
    scratch = train_ddp([*scratch_overrides, "sweep_name=scratch"])
    reference = losses(run_dir(compose_run([*scratch_overrides, "sweep_name=scratch"])))
    assert scratch["metrics"]["world_size"] == 2 and len(reference) == 20

    assert train_ddp([*parent.overrides, *SAVES])["status"] == "completed"
    record = train_ddp([*child.overrides, *SAVES])
    assert record["metrics"]["branched_from"] == {"parent": parent.run_key, "step": 10}
    assert losses(child.run_dir) == reference
    assert (record["loss"], record["val_loss"]) == (scratch["loss"], scratch["val_loss"])

    tear(parent.run_dir / BRANCH_DIR / f"step-{child.branch_step:09d}")
    remove_own_after(parent.run_dir, 8)
    shutil.rmtree(child.run_dir)
    record = train_ddp([*child.overrides, *SAVES])
    rebuilt = {"parent": parent.run_key, "step": 10, "rebuilt_from_step": 8}
    assert record["metrics"]["branched_from"] == rebuilt
    assert losses(child.run_dir) == reference
    assert (record["loss"], record["val_loss"]) == (scratch["loss"], scratch["val_loss"])

    # One process rebuilds from the DDP parent's own checkpoint at step 8 with its own
    # execution (the parent's DDP needs two): the steps before 8 are the DDP parent's, the
    # rest one process's, so the run ends close to, not bit for bit at, either reference.
    single = train(compose_run([*scratch_overrides, "sweep_name=single"]))
    tear(parent.run_dir / BRANCH_DIR / f"step-{child.branch_step:09d}")
    shutil.rmtree(child.run_dir)
    record = train(compose_run([*child.overrides, *SAVES]))
    assert record["metrics"]["branched_from"] == rebuilt
    assert record["execution"]["world_size"] == 1
    assert losses(child.run_dir)[:8] == reference[:8]
    assert record["loss"] == pytest.approx(single["loss"], abs=1e-3)
