"""A local launch under a user's hands: a relaunch after its launcher was killed keeps to
max_parallel, and Ctrl-C stops it cleanly, its trainers checkpointing first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qat_sweep.locks import is_held, run_lock_path

# Two runs of a few seconds each, on a token file written here (no corpus to build).
SWEEP = """
overrides: [data=npy, 'data.paths=[{tokens}]', data.vocab_size=512, data.eos_token_id=0,
  data.max_epochs=null, data.val_block=4096, data.val_fraction=0.05, logger=none,
  train.threads=1, eval.batches=1]
twins: false
subgrids: {{a: {{model: 0.04M, tokens: 300K, seed: [0, 1]}}}}
"""


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_relaunch_keeps_max_parallel_and_ctrl_c_checkpoints(tmp_path: Path) -> None:
    (np.arange(400_000) % 500).astype(np.uint32).tofile(tmp_path / "tok.npy")
    (tmp_path / "s.yaml").write_text(SWEEP.format(tokens=tmp_path / "tok.npy"))
    (tmp_path / "one.yaml").write_text("kind: local\nmax_parallel: 1\n")
    runs = tmp_path / "runs"
    launch = [sys.executable, "-m", "qat_sweep.cli", "launch", f"sweep={tmp_path}/s.yaml"]
    launch += [f"launcher={tmp_path}/one.yaml", f"paths.runs={runs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep_dir = runs / "s"

    def trainers() -> int:
        return sum(is_held(run_lock_path(d)) for d in sweep_dir.iterdir() if d.is_dir())

    def started() -> int:
        return len(list(sweep_dir.glob("*/metrics.jsonl")))

    # A launcher killed outright (kill -9) leaves its running trainer behind.
    first = subprocess.Popen(launch, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    _wait_for(lambda: started() == 1, "the first trainer")
    first.kill()
    first.wait()
    assert trainers() == 1
    orphan = next(d for d in sweep_dir.iterdir() if (d / "metrics.jsonl").exists())

    # The relaunch waits for it rather than running two trainers at max_parallel 1.
    out = tmp_path / "relaunch.out"
    with open(out, "w") as sink:
        second = subprocess.Popen(
            launch, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    _wait_for(lambda: "waiting: 1 trainer(s)" in out.read_text(), "the relaunch to wait")
    assert started() == 1 and trainers() == 1
    holder = json.loads(run_lock_path(orphan).read_text())["pid"]
    os.kill(holder, signal.SIGTERM)  # the orphan stops (after a checkpoint): a slot frees
    _wait_for(lambda: started() == 2, "the relaunch to start the other run")
    assert trainers() <= 1

    # Ctrl-C in its terminal (SIGINT to the launcher's process group): the trainer gets
    # SIGTERM, checkpoints and exits; the launcher says what a relaunch resumes.
    _wait_for(lambda: trainers() == 1, "the other run's trainer")
    time.sleep(1.0)
    os.killpg(second.pid, signal.SIGINT)
    second.wait(timeout=120)
    output = out.read_text()
    assert second.returncode == 130, output
    assert "Traceback" not in output
    assert "0 run(s) completed, 1 stopped after a checkpoint, 0 not started" in output
    assert trainers() == 0
    for run_dir in sweep_dir.iterdir():
        if run_dir.is_dir() and not run_dir.name.startswith("."):
            assert any((run_dir / "checkpoint").iterdir()), run_dir
    logs = (sweep_dir / ".launches" / "logs").glob("*.log")
    assert not any("Traceback" in log.read_text() for log in logs)
