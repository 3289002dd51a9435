"""Job state of planned runs: the run's record first, then the launch manifests that dispatch
writes and what the scheduler (squeue/sacct) or the local process table says."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qat_sweep.locks import is_held, run_lock_path
from qat_sweep.record import IDENTITY_FIELDS, launches_dir, load_record
from qat_sweep.sweep.spec import PlannedRun

# A planned run's job status; `unknown`: the scheduler could not say whether its job is queued.
STATUSES = ("completed", "running", "pending", "failed", "missing", "unknown")
# squeue/sacct are asked again after these pauses (a busy controller times out for seconds).
QUERY_RETRY_DELAYS_S = (1.0, 3.0, 9.0)
QUERY_TIMEOUT_S = 30.0
FULL_DISK_BYTES = 64 << 10  # less free space than this reads as a full disk: no record fits


def attach_status(runs: list[PlannedRun]) -> None:
    """Status from each run's record, then from the launch manifests and the scheduler."""
    if not runs:
        return
    jobs = job_states(runs[0].run_dir.parent, [r.run_key for r in runs])
    for run in runs:
        job = jobs.get(run.run_key)
        run.status, run.error, run.job_id, run.log, run.reason = "missing", None, None, None, None
        run.diverged = False
        if job is not None:
            run.job_id, run.log = job.job_id, job.log
        found = load_record(run.run_dir)
        record = found.record
        if record is not None and (differs := _differs_from_plan(record, run)):
            run.status = "failed"
            run.error = f"{found.path} does not describe this run ({differs}); it will be rerun"
        elif record is not None and record["status"] == "completed":
            run.status = "completed"
        elif job is not None and job.state in ("running", "pending"):
            run.status = job.state  # a retry in the queue outranks the failed record it replaces
            run.reason = job.detail
        elif job is not None and job.state == "unknown":
            run.status, run.reason = "unknown", job.detail  # queued or not: nobody can say now
        elif is_held(run_lock_path(run.run_dir)):
            run.status = "running"  # a trainer holds it: started by hand, or its job is unknown
        elif found.problem is not None:
            run.status, run.error = "failed", f"{found.path} is {found.problem}; it will be rerun"
        elif record is not None:
            run.status, run.error = "failed", f"{record['status']}: {record.get('error')}"
            run.diverged = record["status"] == "diverged"
        elif job is not None and job.state == "failed":
            run.status, run.error = "failed", job.detail
        elif job is not None and job.state == "local" and run.run_dir.exists():
            run.status = "running"
        elif job is not None and job.state == "local":
            run.status = "pending"
        elif run.run_dir.is_dir() and (why := disk_problem(run.run_dir) or log_reason(run.log)):
            # it started, and no record, trainer or job remain: the disk or its log says why
            run.status, run.error = "failed", f"started but left no run record ({why})"


def disk_problem(path: Path) -> str | None:
    """Why nothing can be written under ``path`` now: a read-only or a full filesystem."""
    try:
        fs = os.statvfs(path)
    except OSError as e:
        return f"cannot inspect its filesystem: {e}"
    if fs.f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only filesystem"
    if not os.access(path, os.W_OK):
        return f"{path} is not writable"
    free = fs.f_bavail * fs.f_frsize
    if free < FULL_DISK_BYTES:
        return f"the filesystem of {path} is full ({free // 1024} KiB free)"
    return None


def _differs_from_plan(record: dict[str, Any], run: PlannedRun) -> str:
    """The identity fields in which a completed record and its planned run disagree ('' none).
    A field an older record lacks is not compared (its run key already names the run)."""
    if record["status"] != "completed":
        return ""
    return ", ".join(
        f"{field} {record[field]!r} != planned {getattr(run, field)!r}"
        for field in IDENTITY_FIELDS
        if field in record and record[field] != getattr(run, field)
    )


@dataclass(frozen=True)
class JobState:
    """What the launch manifests and the scheduler say about one run."""

    job_id: str | None
    log: str | None
    state: str  # running | pending | failed | local | gone | unknown (scheduler not answering)
    detail: str | None = None  # why it failed, or why it is pending


_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}


def read_manifests(sweep_dir: Path) -> list[dict[str, Any]]:
    """All launch manifests of a sweep directory, oldest first (file names sort by time)."""
    manifests = []
    for path in sorted(launches_dir(sweep_dir).glob("*.json")):
        try:
            manifests.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return manifests


def job_states(sweep_dir: Path, run_keys: list[str]) -> dict[str, JobState]:
    """Latest launch of each run (from the manifests) and its scheduler state."""
    wanted = set(run_keys)
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for manifest in read_manifests(sweep_dir):
        for job in manifest.get("jobs", []):
            if job.get("run_key") in wanted:
                latest[job["run_key"]] = (manifest, job)
    slurm_ids = sorted({j["job_id"] for m, j in latest.values() if m.get("kind") == "slurm"})
    try:
        states, silent = slurm_job_states(slurm_ids), None
    except SchedulerSilent as e:
        states, silent = {}, str(e)
    out = {}
    for key, (manifest, job) in latest.items():
        log = job.get("stderr") or job.get("log")
        if manifest.get("kind") == "slurm" and silent is not None:
            out[key] = JobState(job["job_id"], log, "unknown", silent)
        elif manifest.get("kind") == "slurm":
            state, reason = states.get(job["job_id"], (None, None))
            out[key] = JobState(
                job["job_id"], log, *_slurm_state(job["job_id"], state, reason, log)
            )
        else:
            out[key] = JobState(job.get("job_id"), log, *_local_state(manifest, job, log))
    return out


def _slurm_state(
    job_id: str, state: str | None, reason: str | None, log: str | None
) -> tuple[str, str | None]:
    if state is None:
        return "gone", None  # neither squeue nor sacct lists it: ended long ago, or purged
    if state in _PENDING:
        return "pending", _pending_reason(reason)
    if state in _RUNNING:
        return "running", None
    why = log_reason(log)
    return "failed", f"SLURM job {job_id} ended {state} without a run record" + (
        f": {why}" if why else ""
    )


_EXCEPTION_LINE = re.compile(r"[A-Za-z_.]*(Error|Exception|Interrupt)\b: ")


def log_reason(log: str | None) -> str | None:
    """The trainer's last word in a run's log (`[qat-sweep] run ... failed: ...`), when it could
    not write its record (a full disk, a read-only directory); None if the log says nothing."""
    if not log:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    said = [line for line in lines if line.startswith("[qat-sweep] run ")]
    if said:
        return said[-1].removeprefix("[qat-sweep] ")
    last = next((line for line in reversed(lines) if line.strip()), "")
    return last if _EXCEPTION_LINE.match(last) else None  # a traceback's last line


# squeue's reason codes a user meets most, in words (others are shown as SLURM spells them)
_REASONS = {
    "BeginTime": "held until its begin time",  # a requeue's ~2 min hold, or the user's --begin
    "Resources": "waiting for free resources",
    "Priority": "higher-priority jobs go first",
    "JobArrayTaskLimit": "the array's parallelism limit (array_parallelism) is reached",
    "QOSMaxJobsPerUserLimit": "the QOS's jobs-per-user limit is reached",
    "ReqNodeNotAvail": "the requested nodes are unavailable (down, drained or reserved)",
    "PartitionTimeLimit": "timeout_min exceeds the partition's MaxTime: it will never start",
}


def _pending_reason(reason: str | None) -> str | None:
    if not reason or reason == "None":
        return None
    return f"{reason}: {_REASONS[reason]}" if reason in _REASONS else reason


def _local_state(
    manifest: dict[str, Any], job: dict[str, Any], log: str | None
) -> tuple[str, str | None]:
    code = job.get("exit_code")
    if code is not None and code != 0:
        why = job.get("error") or log_reason(log)
        return "failed", f"local run exited with code {code} without a run record" + (
            f": {why}" if why else ""
        )
    if code is None and manifest.get("host") == socket.gethostname() and _alive(manifest["pid"]):
        return "local", None
    return "gone", None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class SchedulerSilent(RuntimeError):
    """squeue or sacct failed or timed out on every try: which jobs are queued is not known."""


def slurm_job_states(job_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """SLURM (state, pending reason) per job id (``123_4`` or ``123``) from squeue, then sacct.

    squeue forgets jobs after MinJobAge and sacct may be missing (no accounting): a job neither
    lists has no state. A query that fails or times out is not such an answer: it is retried
    (`QUERY_RETRY_DELAYS_S`), then SchedulerSilent, so a stalled controller never reads as
    "no such job" (a launch would submit the whole sweep again).
    """
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise SchedulerSilent("squeue is not on PATH (is this a SLURM login node?)")
    arrays = sorted({j.split("_")[0] for j in job_ids})
    found = _query(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r"])
    unknown = sorted({j.split("_")[0] for j in job_ids if j not in found})
    if unknown and shutil.which("sacct") is not None:
        sacct = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(unknown)]
        found = {**_query(sacct), **found}
    return found


def _query(command: list[str]) -> dict[str, tuple[str, str | None]]:
    """Parsed ``id|state|reason`` lines of one squeue/sacct call, retried with back-off."""
    problem = ""
    for delay in (0.0, *QUERY_RETRY_DELAYS_S):
        if delay:
            print(
                f"[qat-sweep] {command[0]} {problem}; asking again in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            problem = f"timed out after {QUERY_TIMEOUT_S:g} s"
            continue
        except OSError as e:
            problem = f"could not run ({e})"
            continue
        # squeue refuses a list of only forgotten job ids: an answer (none queued), not a failure
        if out.returncode == 0 or "Invalid job id" in out.stderr:
            return _parse_states(out.stdout)
        problem = f"failed (exit {out.returncode}: {out.stderr.strip() or out.stdout.strip()})"
    tries = 1 + len(QUERY_RETRY_DELAYS_S)
    raise SchedulerSilent(f"`{command[0]}` {problem} ({tries} tries)")


def _parse_states(stdout: str) -> dict[str, tuple[str, str | None]]:
    states = {}
    for line in stdout.splitlines():
        job_id, state, reason = ([*line.split("|"), "", ""])[:3]
        if job_id and state and job_id.strip() != "JobID":
            states[job_id.strip()] = (state.split()[0].rstrip("+"), reason.strip() or None)
    return states
