"""What status, launch and fit may trust: a scheduler that does not answer is no answer, and a
record counts only for the run it describes (no SLURM: a stand-in squeue, real trainers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from qat_sweep.analysis.collect import load_records
from support import stand_in

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.plan import main as plan_main
from qat_sweep.commands.status import main as status_main
from qat_sweep.commands.train import main as train_main
from qat_sweep.common import write_json_atomic
from qat_sweep.record import METRICS_NAME, RECORD_NAME, launches_dir
from qat_sweep.sweep import jobs
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.status import progress
from qat_sweep.train.tracking import truncate_metrics

SWEEP = """
overrides: [data=demo, logger=none, train.threads=1]
twins: {twins}
subgrids:
  a: {{model: 0.2M, tokens: 4096, quant: {quant}{group}}}
"""


def tiny_sweep(tmp_path: Path, quant: str = "w4a4", twins: bool = True) -> str:
    path = tmp_path / "trust.yaml"
    group = "" if quant == "bf16" else ", quant.group_size: 16"
    path.write_text(SWEEP.format(quant=quant, twins=str(twins).lower(), group=group))
    return str(path)


def status_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert status_main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def stand_in_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> Path:
    """`support.stand_in` first on PATH; returns the file counting its calls."""
    bin_dir = tmp_path / f"{name}-bin"
    calls = stand_in(bin_dir, name, body)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def fake_slurm_launch(sweep: str, runs: Path) -> None:
    """A manifest as submit_slurm writes it: the sweep's runs in array 4242, queued."""
    planned = plan_sweep(sweep, [f"paths.runs={runs}"], strict=False)
    jobs_ = [{"run_key": r.run_key, "job_id": f"4242_{i}"} for i, r in enumerate(planned)]
    manifest = {"kind": "slurm", "arrays": ["4242"], "jobs": jobs_}
    write_json_atomic(launches_dir(planned[0].run_dir.parent) / "20260101-000000-1.json", manifest)


def test_a_failing_or_stalled_squeue_is_unknown_and_launch_submits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(jobs, "QUERY_RETRY_DELAYS_S", (0.01, 0.02))
    sweep, runs = tiny_sweep(tmp_path), tmp_path / "runs"
    fake_slurm_launch(sweep, runs)
    timeout = "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation"
    calls = stand_in_first(tmp_path, monkeypatch, "squeue", f"echo '{timeout}' >&2; exit 1")
    argv = [f"sweep={sweep}", f"paths.runs={runs}"]
    rows = status_json(argv, capsys)
    assert [r["status"] for r in rows] == ["unknown", "unknown"]
    assert len(calls.read_text().splitlines()) == 3  # one try and two retries
    assert all("Socket timed out" in r["reason"] and "3 tries" in r["reason"] for r in rows)
    assert status_main(argv) == 0
    table = capsys.readouterr().out
    assert "2 runs: unknown 2" in table and "the scheduler did not answer" in table
    assert "Socket timed out" in table
    manifests = sorted(launches_dir(runs / "trust").glob("*.json"))
    assert launch_main([*argv, "launcher=local"]) == 75
    err = capsys.readouterr().err
    assert "cannot tell which runs are queued: `squeue` failed" in err
    assert "submitting nothing" in err
    assert sorted(launches_dir(runs / "trust").glob("*.json")) == manifests
    assert not any(p.is_dir() for p in (runs / "trust").iterdir() if p.name != ".launches")

    # A squeue that hangs is cut off by its timeout and reads the same.
    monkeypatch.setattr(jobs, "QUERY_TIMEOUT_S", 0.3)
    stand_in_first(tmp_path, monkeypatch, "squeue", "sleep 5")
    rows = status_json(argv, capsys)
    assert {r["status"] for r in rows} == {"unknown"} and "timed out" in rows[0]["reason"]

    # squeue saying the jobs are gone (purged after MinJobAge) is an answer: the runs are missing.
    stand_in_first(tmp_path, monkeypatch, "squeue", "echo 'Invalid job id specified' >&2; exit 1")
    stand_in_first(tmp_path, monkeypatch, "sacct", "exit 0")
    assert [r["status"] for r in status_json(argv, capsys)] == ["missing", "missing"]


@pytest.mark.slow
def test_a_record_counts_only_for_the_run_it_describes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, runs = tiny_sweep(tmp_path), tmp_path / "runs"
    argv = [f"sweep={sweep}", f"paths.runs={runs}"]
    assert launch_main([*argv, "launcher=local"]) == 0
    quantized, twin = (Path(r["run_dir"]) for r in status_json(argv, capsys))
    original = (quantized / RECORD_NAME).read_text()

    # The twin's record copied into the quantized run's directory (rsync into the wrong place).
    shutil.copy(twin / RECORD_NAME, quantized / RECORD_NAME)
    row = status_json(argv, capsys)[0]
    assert row["status"] == "failed"
    assert f"the record of run {twin.name!r}, not of this directory's run" in row["error"]
    rows, skipped = load_records(runs / "trust")
    assert [r["run_key"] for r in rows] == [twin.name]
    assert skipped[0]["run_key"] == quantized.name
    assert "not this run's record" in skipped[0]["reason"]

    # A record edited by hand: its run_key is right, its seed is not the key's.
    (quantized / RECORD_NAME).write_text(original.replace('"seed": 0', '"seed": 1'))
    row = status_json(argv, capsys)[0]
    assert row["status"] == "failed" and "its seed='1' is not the run_key's '0'" in row["error"]
    # ... or a field the key does not spell (lr): the plan of the run says so.
    (quantized / RECORD_NAME).write_text(original.replace('"lr": 0.003', '"lr": 0.1'))
    row = status_json(argv, capsys)[0]
    assert row["status"] == "failed" and "lr 0.1 != planned 0.003" in row["error"]

    # launch trains the run again and its own record replaces the foreign one.
    assert launch_main([*argv, "launcher=local"]) == 0
    assert "launching 1" in capsys.readouterr().out
    assert [r["status"] for r in status_json(argv, capsys)] == ["completed", "completed"]


@pytest.mark.parametrize(
    "override",
    [
        "sweep_name=../..",
        "sweep_name=/tmp/elsewhere",
        "sweep_name=a/b",
        "run_key=../x",
        "paths.runs=",
    ],
)
def test_run_directories_stay_below_paths_runs(
    override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tiny_sweep(tmp_path, quant="bf16", twins=False)
    assert train_main(["model=0.2M", "tokens=4096", "logger=none", "data=demo", override]) == 2
    key = override.split("=")[0]
    assert f"{key}=" in capsys.readouterr().err
    if key != "run_key":  # plan derives the run_key itself
        assert plan_main([f"sweep={sweep}", override]) == 2
        err = capsys.readouterr().err
        assert "1 problem(s)" in err and f"{key}=" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trust.yaml"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 400 KiB filesystem (tmpfs): a run's first checkpoint fills it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)])
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_then_read_only_disk_is_shown_and_the_launcher_survives(
    tmp_path: Path, small_disk: Path, capsys
) -> None:
    sweep = tiny_sweep(tmp_path, quant="bf16", twins=False)
    argv = [f"sweep={sweep}", f"paths.runs={small_disk}", "checkpoint.every_steps=1"]
    launch = [sys.executable, "-m", "qat_sweep.cli", "launch", *argv, "launcher=local"]
    done = subprocess.run(
        launch, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 1, err  # the run failed; the launcher reported it
    assert "[1/1]" in out and "failed" in out and "Traceback" not in out + err
    assert "cannot write the launch manifest" in err and "No space left on device" in err
    (row,) = status_json(argv, capsys)
    assert row["status"] == "failed" and "started but left no run record" in row["error"]
    assert "is full" in row["error"]

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    (row,) = status_json(argv, capsys)
    assert row["status"] == "failed" and "read-only filesystem" in row["error"]
    assert launch_main([*argv, "launcher=local"]) == 2  # refused while planning
    err = capsys.readouterr().err
    assert "is not writable" in err and "nothing was launched" in err


def test_malformed_metrics_rows_are_skipped_with_file_and_line(tmp_path: Path, capsys) -> None:
    sweep = tiny_sweep(tmp_path, quant="bf16", twins=False)
    (run,) = plan_sweep(sweep, [f"paths.runs={tmp_path / 'runs'}"], strict=False)
    run.run_dir.mkdir(parents=True)
    metrics = run.run_dir / METRICS_NAME
    rows = [
        {"step": 0, "loss": 6.2, "loss_smoothed": 6.2, "tokens": 2048},
        [1, 2],  # valid JSON, no row
        {"step": "abc", "loss": 6.0},
        {"step": 1, "loss": 6.1, "loss_smoothed": 6.15, "tokens": 4096, "tokens_per_s": 900.0},
        {"step": 1.5, "loss": 6.0},
        {"step": 1, "val_loss": 6.3},
        {"step": 2, "loss": "nan?", "tokens": 6144},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    capsys.readouterr()
    info = progress(run)  # what status shows of a running run
    assert info["step"] == 1 and info["tokens"] == 4096 and info["tokens_per_s"] == 900.0
    err = capsys.readouterr().err
    for line, problem in [(2, "not a JSON object"), (3, "step 'abc'"), (5, "step 1.5")]:
        assert f"{metrics}, line {line}: {problem}" in err
    assert "line 7: loss 'nan?' is not a number" in err and "line 8" not in err  # torn: quiet

    truncate_metrics(run.run_dir, last_step=2)  # a resume from the checkpoint at step 2
    kept = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert kept == [rows[0], rows[3], rows[5]]
    assert f"{metrics}, line 3: step 'abc'" in capsys.readouterr().err
