"""One launcher per sweep, one trainer per run directory: advisory file locks (``flock``).

The kernel drops a ``flock`` when its holder exits, however it exits (``kill -9``, a node's
slurmstepd tearing the job down), so a lock file left behind is never stale: the next process
simply takes it. The holder writes who it is into the file (host, pid, SLURM job, since when,
how many times the run was started) so a refused process can name it. ``flock`` works across
nodes on NFSv4 and Lustre/GPFS mounts with locking enabled; a filesystem without locks gets a
warning and no protection.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from qat_sweep.record import LAUNCH_LOCK, RUN_LOCK, launches_dir


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``holder`` is what it wrote into the file."""

    def __init__(self, path: Path, holder: dict[str, Any], what: str) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{what} is held by {describe_holder(holder)} (lock file {path})")


def describe_holder(holder: dict[str, Any]) -> str:
    job = holder.get("slurm_job")
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if job:
        parts.append(f"SLURM job {job}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


def read_holder(path: Path) -> dict[str, Any]:
    """What the last holder of ``path`` wrote (``{}`` if nothing readable)."""
    try:
        holder = json.loads(Path(path).read_text() or "{}")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _try_lock(handle: TextIO) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:  # a filesystem without locks (ENOLCK): go on, unprotected, and say so
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        warnings.warn(f"{handle.name}: this filesystem has no file locks ({e})", stacklevel=3)
    return True


@contextlib.contextmanager
def hold(
    path: Path,
    what: str,
    wait_s: float = 0.0,
    on_wait: Callable[[LockHeld], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Hold the lock at ``path`` (created if needed), waiting up to ``wait_s`` for it.

    Raises LockHeld naming the holder when it stays taken; ``on_wait`` hears of the holder
    once when the first attempt fails. Yields the holder record written into the file:
    host, pid, SLURM job, time and ``starts`` (1 + the previous holder's count).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (closed below; "a+" never truncates a holder's record)
    try:
        deadline = time.monotonic() + wait_s
        tries = 0
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise LockHeld(path, read_holder(path), what)
            if tries == 0 and on_wait is not None:
                on_wait(LockHeld(path, read_holder(path), what))
            tries += 1
            time.sleep(0.2)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job": _slurm_job(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "starts": int(read_holder(path).get("starts", 0)) + 1,
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        yield holder
    finally:
        handle.close()  # releases the flock


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path`` (a brief probe: takes and drops it).

    The trainer waits a few seconds for its lock, so a probe never makes it give up.
    """
    if not Path(path).exists():
        return False
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except OSError:
        return False
    return False


def run_lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_LOCK


def run_starts(run_dir: Path) -> int:
    """How many times a trainer took this run directory (restarts = starts - 1)."""
    return int(read_holder(run_lock_path(run_dir)).get("starts", 0))


def process_rank() -> int:
    """This process's rank before torch.distributed starts: torchrun's RANK or srun's PROCID."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


@contextlib.contextmanager
def run_lock(run_dir: Path, wait_s: float = 5.0) -> Iterator[dict[str, Any]]:
    """One trainer per run directory: a second one raises LockHeld within ``wait_s``.

    Rank 0 holds the lock for its job; another rank only refuses when a live process of
    another job holds it, so a refused job's ranks all leave instead of waiting for rank 0.
    """
    path, what = run_lock_path(run_dir), f"run directory {run_dir}"
    if process_rank() != 0:
        holder = read_holder(path)
        if is_held(path) and holder.get("slurm_job") not in (None, _slurm_job()):
            raise LockHeld(path, holder, what)
        yield holder
        return
    with hold(path, what, wait_s) as holder:
        yield holder


@contextlib.contextmanager
def launch_lock(
    sweep_dir: Path, wait_s: float, on_wait: Callable[[LockHeld], None] | None = None
) -> Iterator[dict[str, Any]]:
    """One ``qat-sweep launch`` per sweep directory, held from status check to submission."""
    path = launches_dir(sweep_dir) / LAUNCH_LOCK
    with hold(path, f"launching sweep directory {sweep_dir}", wait_s, on_wait) as holder:
        yield holder
