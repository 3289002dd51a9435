"""`status` of the paper sweep on one 100-column screen: counts per sub-grid and model, the
sweep's ETA, running runs, failures grouped by reason, hints that keep the command's overrides.
Run directories are written as the trainer and the launcher would (records, metrics rows,
launch manifests); nothing is mocked."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from support import completed_record

from qat_sweep.commands.status import main as status_main
from qat_sweep.common import write_json_atomic
from qat_sweep.record import METRICS_NAME, RECORD_NAME, launches_dir
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.status import one_screen


def write_manifest(sweep_dir: Path, jobs: list[dict]) -> None:
    manifest = {"kind": "local", "host": socket.gethostname(), "pid": os.getpid(), "jobs": jobs}
    write_json_atomic(launches_dir(sweep_dir) / "20260101-000000-1-000000001.json", manifest)


def test_paper_status_fits_one_screen_with_eta_and_failures_by_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a short paths.runs: the hints that repeat it are never cut
    argv = ["sweep=paper", "paths.runs=runs"]
    runs = plan_sweep("paper", ["paths.runs=runs"], strict=False)
    for run in runs[:10]:  # completed
        run.run_dir.mkdir(parents=True)
        write_json_atomic(run.run_dir / RECORD_NAME, completed_record(run, 3.0))
    jobs = []
    for run in runs[10:18]:  # training now, a quarter done, at 100K tokens/s
        run.run_dir.mkdir(parents=True)
        row = {"step": 10, "tokens": run.tokens // 4, "loss": 3.5, "loss_smoothed": 3.51234567}
        row["tokens_per_s"] = 1e5
        (run.run_dir / METRICS_NAME).write_text(json.dumps(row) + "\n")
        jobs.append({"run_key": run.run_key, "job_id": "local:1", "log": "x.log"})
    for n, run in enumerate(runs[18:21]):  # two killed (exit 137), one that exited 1
        jobs.append({"run_key": run.run_key, "job_id": f"local:{n}", "log": f"{n}.log"})
        jobs[-1]["exit_code"] = 137 if n < 2 else 1
    write_manifest(runs[0].run_dir.parent, jobs)

    assert status_main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) <= 40  # one 100x40 screen
    assert lines[0] == "289 runs: completed 10, running 8, failed 3, missing 268"
    assert "sweep ETA " in lines[1] and "8 running run(s)" in lines[1]
    [main] = [line for line in lines if line.startswith("main_int4 ")]
    assert main.split()[1:7] == ["240", "10", "8", "0", "3", "219"]
    assert sum("% loss 3.5123 ETA " in line for line in lines) == 6  # 4 decimals
    assert "... and 2 more" in out
    # three failures, two reasons (an exit code is a reason, not noise): one line each
    failures = [line.strip() for line in lines if "x local run exited" in line]
    assert failures == [
        "2x local run exited with code 137 without a run record",
        "1x local run exited with code 1 without a run record",
    ]
    # the hints keep this command's paths.runs
    assert "  qat-sweep launch sweep=paper paths.runs=runs launcher=PROFILE\n" in out
    assert "  qat-sweep status sweep=paper paths.runs=runs --runs\n" in out

    assert status_main([*argv, "--runs"]) == 0
    every = capsys.readouterr().out
    assert sum(line.startswith("running ") for line in every.splitlines()) == 8
    assert "    log: 0.log" in every
    cut = one_screen(every, 20).splitlines()
    assert len(cut) == 20 and cut[-1].endswith("more lines (--runs)")


def test_a_begin_time_hold_is_called_requeued_only_for_a_run_that_trained(tmp_path: Path) -> None:
    from qat_sweep.sweep.jobs import _pending_reason
    from qat_sweep.sweep.status import _pending_text

    fresh, started = plan_sweep("demo", [f"paths.runs={tmp_path}"], strict=False)[:2]
    for run in (fresh, started):
        run.status, run.reason = "pending", _pending_reason("BeginTime")
    started.run_dir.mkdir(parents=True)
    (started.run_dir / METRICS_NAME).write_text('{"step": 1, "loss": 5.0}\n')
    assert "requeued" not in _pending_text(fresh, {}) and "--begin" in _pending_text(fresh, {})
    assert "requeued: it trained before" in _pending_text(started, {})
