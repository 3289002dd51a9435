"""Chaos on the loopback SLURM cluster: while a sweep of 8 tiny runs trains, a seeded mix of
scancel, scontrol requeue, kill -9 of a trainer, a truncated checkpoint and concurrent launches
hits it; relaunching until status says all completed must leave every run completed exactly
once, with the loss of an undisturbed run, each step logged once and no task beyond the runs
plus the retries the faults caused.

The truncated-checkpoint fault relies on the trainer moving a checkpoint it cannot read aside
(to checkpoint-corrupt/) and resuming from the previous one (train/checkpoint.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import train_rows

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.locks import is_held, read_holder, run_lock_path
from qat_sweep.record import METRICS_NAME
from qat_sweep.sweep.jobs import read_manifests
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.spec import PlannedRun
from qat_sweep.sweep.status import total_steps
from qat_sweep.train.trainer import train_from_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 60
SWEEP = f"""overrides: [data=demo, logger=none, train.threads=1, optim.batch_seqs=4, eval.batches=1,
            checkpoint.every_steps=5, logger.progress_every_steps=5]
twins: false
subgrids:
  bf16: {{model: 0.2M, tokens: {STEPS * 4 * 128}, quant: bf16, seed: [0, 1]}}
  w4a4: {{model: 0.2M, tokens: {STEPS * 4 * 128}, quant: w4a4, quant.group_size: [16, 32, channel],
         seed: [0, 1]}}
"""
FAULTS = ("scancel", "requeue", "kill", "truncate", "launch")
RESUBMITTING = ("scancel", "kill", "truncate")  # each may cost one new array task


def logged_steps(run: PlannedRun) -> list[int]:
    if not (run.run_dir / METRICS_NAME).exists():
        return []
    return [row["step"] for row in train_rows(run.run_dir)]


def launch_cli(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "qat_sweep.cli", "launch", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def two_launches(argv: list[str]) -> list[str]:
    """Two `qat-sweep launch` processes started together; their outputs."""
    procs = [launch_cli(argv), launch_cli(argv)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


def truncate_newest_checkpoint_file(run: PlannedRun) -> Path:
    files = [
        p
        for p in (run.run_dir / "checkpoint").rglob("*")
        if p.is_file() and not any(".tmp" in part for part in p.parts)  # complete ones only
    ]
    newest = max(files, key=lambda p: p.stat().st_mtime)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    return newest


def test_faults_neither_lose_nor_double_work(
    tmp_path: Path, demo_data: Path, slurm_cluster
) -> None:
    sweep = tmp_path / "chaos.yaml"
    sweep.write_text(SWEEP)
    data = f"paths.data={demo_data.parent}"
    runs_root = tmp_path / "runs"
    extra = [f"paths.runs={runs_root}", data]
    argv = [f"sweep={sweep}", "launcher=ci", *extra]

    # Undisturbed reference: the same runs, trained here one after the other.
    reference = {}
    for run in plan_sweep(str(sweep), [f"paths.runs={tmp_path / 'ref'}", data], strict=False):
        record = train_from_overrides([*run.overrides, "train.device=cpu", "train.threads=1"])
        assert record["status"] == "completed", record["error"]
        reference[run.run_key] = record["loss"]
    assert len(reference) == 8

    rng = random.Random(13)
    faults = list(FAULTS)
    rng.shuffle(faults)
    applied: list[tuple[str, str]] = []
    reasons_seen: set[str] = set()

    # A first fault before any: two launches at once submit the sweep once.
    outputs = two_launches(argv)
    assert sum("submitted 8 runs" in out for out in outputs) == 1, outputs
    assert sum("launching 0" in out for out in outputs) == 1, outputs

    deadline = time.monotonic() + 600
    relaunches = 0
    while True:
        assert time.monotonic() < deadline, f"sweep did not complete; faults {applied}"
        runs = plan_sweep(str(sweep), extra, strict=False)
        if all(r.status == "completed" for r in runs):
            break
        for run in runs:
            if run.status == "pending" and run.reason and run.reason.startswith("BeginTime"):
                reasons_seen.add(run.reason)
                try:  # skip SLURM's ~2 min requeue delay; it may start between the two calls
                    slurm_cluster.run("scontrol", "update", f"JobId={run.job_id}", "StartTime=now")
                except RuntimeError as err:
                    assert "no longer pending" in str(err) or "Invalid job" in str(err), err
        hit = {key for _, key in applied}
        ripe = [
            r
            for r in runs
            if r.status == "running"
            and r.run_key not in hit
            and is_held(run_lock_path(r.run_dir))
            and 6 <= len(logged_steps(r)) <= STEPS - 15  # a checkpoint exists, work remains
        ]
        if faults and ripe:
            fault, run = faults.pop(0), rng.choice(ripe)
            applied.append((fault, run.run_key))
            if fault == "scancel":
                slurm_cluster.run("scancel", str(run.job_id))
            elif fault == "requeue":
                slurm_cluster.run("scontrol", "requeue", str(run.job_id))
            elif fault in ("kill", "truncate"):
                os.kill(int(read_holder(run_lock_path(run.run_dir))["pid"]), signal.SIGKILL)
                if fault == "truncate":
                    while is_held(run_lock_path(run.run_dir)):
                        time.sleep(0.1)
                    truncate_newest_checkpoint_file(run)
            else:  # a second and third launch while the sweep runs: nothing is doubled
                two_launches(argv)
            continue
        if not any(r.status in ("running", "pending") for r in runs):
            relaunches += 1
            assert relaunches <= 8, f"relaunched {relaunches} times; faults {applied}"
            assert launch_main(argv) == 0
        time.sleep(0.3)

    assert not faults, f"faults not injected (runs too fast?): {faults}"
    if any(fault == "requeue" for fault, _ in applied):
        assert reasons_seen, "the requeued run was never shown pending with its reason"
    for fault, key in applied:
        if fault == "truncate":  # kept for inspection, out of the resume path
            assert any((runs_root / "chaos" / key / "checkpoint-corrupt").rglob("*")), key

    logs = "".join(p.read_text() for p in runs_root.rglob("*_log.out"))
    for run in runs:
        record = json.loads((run.run_dir / "result.json").read_text())
        assert record["status"] == "completed"
        assert record["loss"] == pytest.approx(reference[run.run_key], abs=1e-6), applied
        steps = logged_steps(run)
        assert sorted(steps) == list(range(1, total_steps(run) + 1)), run.run_key
        final = f"[{run.run_key}] step {total_steps(run)}/{total_steps(run)} "
        assert logs.count(final) == 1, f"{run.run_key} finished {logs.count(final)} times"

    tasks = {job["job_id"] for m in read_manifests(runs_root / "chaos") for job in m["jobs"]}
    retries = sum(fault in RESUBMITTING for fault, _ in applied)
    assert 8 <= len(tasks) <= 8 + retries, (len(tasks), applied)
