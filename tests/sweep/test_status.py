"""One launcher per sweep, one trainer per run directory, and a status worth watching (no SLURM):
real trainer processes, real locks, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import wait_for
from support import metrics_rows, run_cli, train_rows

from qat_sweep.commands import launch as launch_command
from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.status import main as status_main
from qat_sweep.locks import launch_lock, run_starts
from qat_sweep.record import METRICS_NAME, read_record
from qat_sweep.sweep import launch as dispatch
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.status import progress

SWEEP = """overrides: [data=demo, logger=none, train.threads=1]
twins: false
subgrids:
  a: {{model: 0.2M, tokens: {tokens}, quant: bf16}}
"""


def one_run_sweep(tmp_path: Path, name: str, tokens: int, data: Path) -> tuple[str, list[str]]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(tokens=tokens))
    extra = [f"paths.runs={tmp_path / 'runs'}", f"paths.data={data.parent}"]
    return str(path), extra


def status_rows(sweep: str, extra: list[str], capsys) -> list[dict]:
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def trainer(overrides: list[str]) -> subprocess.Popen:
    return run_cli(overrides, env={"OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_second_trainer_is_refused_and_status_follows_a_run(
    tmp_path: Path, demo_data: Path, capsys
) -> None:
    steps, batch = 60, 4 * 128  # 4 sequences of 128 tokens a step: seconds on a busy CPU
    sweep, extra = one_run_sweep(tmp_path, "one", batch * steps, demo_data)
    overrides = [*extra, "optim.batch_seqs=4", "eval.batches=1"]
    overrides += ["checkpoint.every_steps=10", "logger.progress_every_steps=5"]
    (run,) = plan_sweep(sweep, overrides, strict=False)
    metrics = run.run_dir / METRICS_NAME

    first = trainer(run.overrides)
    wait_for(lambda: metrics.exists() and len(train_rows(run.run_dir)) >= 20, 120, "20 steps")
    first.send_signal(signal.SIGSTOP)  # frozen mid-run, still holding its lock: no race below
    (row,) = status_rows(sweep, overrides, capsys)
    assert row["status"] == "running"  # no job: the trainer's lock says so
    info = row["progress"]
    assert info["total_steps"] == steps and 19 <= info["step"] < steps
    assert info["tokens"] == info["step"] * batch and info["tokens_per_s"] > 0
    assert info["eta_s"] > 0 and info["restarts"] == 0 and info["loss_smoothed"] > 0
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", *overrides]) == 0
    table = capsys.readouterr().out
    assert table.startswith("1 runs: running 1\n")
    assert "of the sweep's GPU-hours done; sweep ETA " in table
    assert "% loss " in table and " ETA " in table and "restarts 0" in table
    assert status_main([f"sweep={sweep}", *overrides, "--runs"]) == 0
    table = capsys.readouterr().out
    assert f"step {info['step']}/{steps} (" in table and "tok/s, ETA " in table

    second = trainer(run.overrides)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 75, err
    assert f"pid {first.pid}" in err and "run directory" in err and "Traceback" not in err

    first.send_signal(signal.SIGKILL)  # its lock goes with it: nothing stale is left
    first.wait()
    (row,) = status_rows(sweep, overrides, capsys)
    assert row["status"] == "missing" and row["progress"] is None
    third = trainer(run.overrides)
    out, err = third.communicate(timeout=240)
    assert third.returncode == 0, err
    assert "resuming" in out
    record = read_record(run.run_dir)
    assert record["status"] == "completed"
    assert [row["step"] for row in train_rows(run.run_dir)] == list(range(1, steps + 1))
    evaluated = [row["step"] for row in metrics_rows(run.run_dir) if "val_loss" in row]
    assert evaluated == [*range(6, steps, 6), steps]  # each evaluation once, the final one too
    assert run_starts(run.run_dir) == 2  # the refused trainer never held the lock
    assert progress(run)["restarts"] == 1


def test_unreadable_record_is_reported_and_relaunched(tmp_path: Path, demo_data, capsys) -> None:
    sweep, extra = one_run_sweep(tmp_path, "torn", 4096, demo_data)
    (run,) = plan_sweep(sweep, extra, strict=False)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "result.json").write_text('{"schema": 1, "run_key": "' + run.run_key[:5])
    (row,) = status_rows(sweep, extra, capsys)
    assert row["status"] == "failed"
    assert "result.json is unreadable" in row["error"] and "will be rerun" in row["error"]
    capsys.readouterr()
    assert launch_main([f"sweep={sweep}", "launcher=local", "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    assert "failed 1; launching 1" in out and run.run_key in out


@pytest.mark.slow
def test_concurrent_launch_waits_then_names_the_holder(
    tmp_path: Path, demo_data, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep, extra = one_run_sweep(tmp_path, "pair", 4096, demo_data)
    (run,) = plan_sweep(sweep, extra, strict=False)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from qat_sweep.locks import launch_lock\n"
            f"with launch_lock({str(run.run_dir.parent)!r}, 0):\n"
            "    print('held', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setattr(launch_command, "LAUNCH_LOCK_WAIT_S", 1.0)  # the command waits
    argv = [f"sweep={sweep}", "launcher=local", *extra]
    capsys.readouterr()
    assert launch_main(argv) == dispatch.EXIT_LOCKED
    captured = capsys.readouterr()
    assert "waiting up to 1 s" in captured.out
    assert f"pid {holder.pid}" in captured.err and "nothing was launched" in captured.err
    assert not list((run.run_dir.parent / ".launches").glob("*.json"))  # no manifest

    holder.send_signal(signal.SIGKILL)  # a launcher that died: the next launch goes ahead
    holder.wait()
    with launch_lock(run.run_dir.parent, 0) as taken:
        assert taken["pid"] == os.getpid()
    assert launch_main(argv) == 0
    assert read_record(run.run_dir)["status"] == "completed"


def test_watch_redraws_until_interrupted(tmp_path: Path, demo_data) -> None:
    sweep, extra = one_run_sweep(tmp_path, "watched", 4096, demo_data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qat_sweep.cli", "status", f"sweep={sweep}", "--watch=0.2", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if sum("refreshing every 0.2 s" in seen for seen in lines) == 3:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0  # Ctrl-C ends the watch quietly
    summaries = [line for line in lines if line.startswith("1 runs: ")]
    assert len(summaries) == 3 and "missing 1" in summaries[-1]
