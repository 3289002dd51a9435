"""Preemption and time limits: signals set a flag, the loop checkpoints at a step boundary.

SLURM sends USR1/USR2 ahead of a time limit (sbatch --signal) and TERM on preemption or
`scontrol requeue`; saving inside the handler could catch the optimizer half-way through a step.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a terminated job reports


class Preempted(SystemExit):
    """Raised after a checkpoint was saved on SIGUSR1/SIGUSR2/SIGTERM; SLURM requeues the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.signum = signum


_stop_signal: int | None = None


def stop_signal() -> int | None:
    """The first preemption/time-limit signal received since the handlers were installed."""
    return _stop_signal


def _request_stop(signum: int, frame: Any) -> None:
    global _stop_signal
    if _stop_signal is None:  # the first signal decides: a TERM after USR2 must not skip requeue
        _stop_signal = signum


def install_signal_handlers() -> dict[int, Any]:
    """Preemption and time-limit signals only set a flag: the loop checkpoints at a step boundary."""
    global _stop_signal
    _stop_signal = None
    if sys.platform == "win32" or not _is_main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        previous[sig] = signal.signal(sig, _request_stop)
    return previous


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def requeue_slurm_job(signum: int) -> None:
    """USR1/USR2 are warnings (time limit, submitit interrupt): SLURM does not requeue by itself."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or signum == signal.SIGTERM:
        return
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{task}" if array_job and task else job
    subprocess.run(["scontrol", "requeue", target], check=False, timeout=60)


def release_held_jobs(job_list: Path) -> None:
    """Release the SLURM jobs held until this run passed a branch step (ids in ``job_list``,
    written by launch): each starts from the checkpoint just kept. Releasing a job that is no
    longer held does nothing."""
    ids = job_list.read_text().split() if job_list.exists() else []
    if ids and shutil.which("scontrol"):
        subprocess.run(["scontrol", "release", ",".join(ids)], check=False, timeout=60)
