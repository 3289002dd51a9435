"""Runs that branch: a run started from its parent's checkpoint trains, bit for bit, what it
trains from scratch, for QAT after BF16 and for WSD trunks, through interruptions of parent
and child (a run whose record is gone and whose newer checkpoints are gone is a run killed
after its last checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from support import TINY, metrics_rows, train_rows

from qat_sweep.config.compose import compose_run, run_dir
from qat_sweep.record import BRANCH_DIR, CORRUPT_DIR, RECORD_NAME
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.train.checkpoint import complete_checkpoints
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


def interrupt(directory: Path, after_step: int) -> None:
    """As if the run was killed right after its checkpoint at ``after_step`` (0: before any)."""
    (directory / RECORD_NAME).unlink()
    for checkpoint in complete_checkpoints(directory):
        if int(checkpoint.name.split("-")[1]) > after_step:
            shutil.rmtree(checkpoint)


def losses(directory: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["loss_smoothed"], r["lr"]) for r in train_rows(directory)]


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
    parent_cfg = compose_run([*parent.overrides, *SAVES])
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

    # A torn branch checkpoint of a completed parent is moved aside; the child trains from
    # scratch, to the same result.
    kept = parent.run_dir / BRANCH_DIR / f"step-{child.branch_step:09d}"
    (shard,) = kept.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    shutil.rmtree(child.run_dir)
    again = train(child_cfg)
    assert losses(child.run_dir) == reference and again["metrics"]["branched_from"] is None
    assert not kept.exists() and list((parent.run_dir / CORRUPT_DIR).iterdir())
