"""Helpers the test folders share: the tiny training run and readers of its metrics log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

# A few dozen steps of the smallest preset: enough for the loss to fall, seconds on a CPU.
TINY = [
    "model=0.2M",
    "tokens=40960",  # 20 steps of 16 x 128 tokens
    "logger=none",
    "eval.batches=2",
    "eval.batch_seqs=8",
    "train.threads=1",
]


def train_rows(record_dir: Path) -> list[dict]:
    """The training steps' rows (evaluations are rows of their own)."""
    return [r for r in metrics_rows(record_dir) if "loss" in r]


def metrics_rows(record_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (record_dir / "metrics.jsonl").read_text().splitlines()]


def run_cli(
    args: list[str], env: dict | None = None, stderr: int = subprocess.STDOUT, **kwargs
) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "qat_sweep.train", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=full_env,
        **kwargs,
    )


def stand_in(bin_dir: Path, name: str, body: str) -> Path:
    """A bash program ``name`` in ``bin_dir`` (put it first on PATH) that logs its arguments,
    one call a line, to the returned file, then runs ``body``: a scheduler that fails, stalls or
    refuses, in front of the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = bin_dir / f"{name}.calls"
    program = bin_dir / name
    program.write_text(f'#!/bin/bash\necho "$@" >> {calls}\n{body}\n')
    program.chmod(0o755)
    calls.touch()
    return calls


def completed_record(run, loss: float) -> dict:
    """A valid record of a planned run (`sweep.spec.PlannedRun`) that completed with `loss`, as
    the trainer writes it; for tests of what reads run directories."""
    return {
        **run.row(),
        "schema": 1,
        "sweep": run.config["sweep_name"],
        "status": "completed",
        "error": None,
        "n_params_total": run.n_params,
        "loss": loss,
        "val_loss": loss,
        "metrics": {},
        "config": run.config,
        "versions": {},
        "slurm": None,
        "wandb": None,
        "twin_key": None,
        "finished": "2026-01-01T00:00:00",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: list[str], n: int = 2) -> list[subprocess.Popen]:
    """n trainer processes joined over gloo, as SLURM starts the tasks of one job."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = {
            **os.environ, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        command = [sys.executable, "-m", "qat_sweep.train", *args]
        out = subprocess.PIPE
        procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    outputs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
