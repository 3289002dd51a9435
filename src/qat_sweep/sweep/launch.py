"""Launching a planned sweep (SLURM job arrays via submitit, or local processes) and its status.

Launching is idempotent: runs with a completed record, or queued/running per the launch
manifests and the scheduler, are skipped; failed and missing runs are (re)submitted. SLURM
launches return at once after writing a manifest in ``<runs>/<sweep>/.launches/``; preemption
and time limits are handled by the trainer (checkpoint, ``scontrol requeue``), so the submitted
callable is a plain function call that resumes from the run's checkpoint when re-run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qat_sweep.common import format_duration, format_loss, write_json_atomic
from qat_sweep.config.compose import twin_key
from qat_sweep.config_dirs import CONFIG_DIR_ENV, user_root
from qat_sweep.delta import BF16, twin_gap
from qat_sweep.locks import LockHeld, is_held, run_lock_path
from qat_sweep.record import LAUNCH_LOGS, SUBMITIT_DIR, launches_dir, read_record
from qat_sweep.sweep.branches import (
    BranchGate,
    held_shape,
    hold_for_parents,
    parents_first,
    waiting_for_parents,
)
from qat_sweep.sweep.profiles import (
    LaunchProfile,
    executor_parameters,
    max_array_size,
)
from qat_sweep.sweep.spec import PlanError, PlannedRun
from qat_sweep.sweep.summary import reason_groups
from qat_sweep.train.preemption import EXIT_PREEMPTED
from qat_sweep.train.tracking import quantized_twins, twin_record

LAUNCH_LOCK_WAIT_S = 120.0  # a second launch waits this long for the first to finish submitting
EXIT_LOCKED = 75  # EX_TEMPFAIL: another launch holds the sweep, or squeue fails; try later


class TrainRun:
    """The submitit callable of one run: compose from overrides and train (resumes if possible)."""

    def __init__(self, overrides: list[str]) -> None:
        self.overrides = list(overrides)
        self.config_root = str(user_root())  # the launch's conf/ overlay, wherever the job runs

    def __call__(self) -> dict[str, Any]:
        os.environ[CONFIG_DIR_ENV] = self.config_root
        from qat_sweep.train.trainer import train_from_overrides

        try:
            record = train_from_overrides(self.overrides)
        except LockHeld as held:  # another trainer has this run: its record is the one that counts
            print(f"[qat-sweep] not started: {held}", file=sys.stderr)
            return {"status": "not started", "error": str(held)}
        return {k: record.get(k) for k in ("run_key", "status", "loss", "error")}


def _check_local_devices(runs: list[PlannedRun]) -> None:
    """train.device=cuda on this machine needs a CUDA device (checked once, not per job)."""
    if any(r.config["train"]["device"] == "cuda" for r in runs):
        import torch

        if not torch.cuda.is_available():
            raise PlanError(
                "train.device='cuda' but this machine has no CUDA device (launcher kind local); "
                "use train.device=cpu or auto\nnothing was launched."
            )


def to_launch(runs: list[PlannedRun], retry_diverged: bool = False) -> list[PlannedRun]:
    """Runs that need a job: no completed record and not queued or running.

    A diverged run is left out unless asked for: the same config resumes from the same
    checkpoint onto the same batches, so a rerun pays GPU-hours to diverge again."""
    return [r for r in runs if r.status == "missing" or _rerun(r, retry_diverged)]


def _rerun(run: PlannedRun, retry_diverged: bool) -> bool:
    return run.status == "failed" and (retry_diverged or not run.diverged)


def chunks(runs: list[PlannedRun], size: int) -> list[list[PlannedRun]]:
    """Split into arrays of at most ``size`` tasks (array indices must stay < MaxArraySize)."""
    return [runs[i : i + size] for i in range(0, len(runs), size)]


def resource_groups(
    runs: list[PlannedRun], profile: LaunchProfile
) -> list[tuple[LaunchProfile, list[PlannedRun]]]:
    """Runs grouped by resource shape (nodes, GPUs, time, memory): one job array per shape."""
    groups: dict[str, tuple[LaunchProfile, list[PlannedRun]]] = {}
    for run in runs:
        shape = run.resources or profile
        key = json.dumps(executor_parameters(shape), sort_keys=True, default=str)
        groups.setdefault(key, (shape, []))[1].append(run)
    return list(groups.values())


def job_arrays(
    runs: list[PlannedRun], profile: LaunchProfile, size: int | None = None
) -> list[tuple[LaunchProfile, list[PlannedRun]]]:
    """The arrays a SLURM launch submits: per resource shape, chunks of ``size`` (default: the
    cluster's MaxArraySize)."""
    size = size or max_array_size(profile)
    ready, waiting = waiting_for_parents(parents_first(runs))
    # Children whose parent has not passed their branch step are queued held (branches.py),
    # in arrays after their parents' (an array may wait for an earlier one: array_limits).
    held = [(held_shape(shape), group) for shape, group in resource_groups(waiting, profile)]
    groups = [*resource_groups(ready, profile), *held]
    return [(shape, chunk) for shape, group in groups for chunk in chunks(group, size)]


def _write_manifest(sweep_dir: Path, manifest: dict[str, Any], name: str) -> Path:
    path = launches_dir(sweep_dir) / name
    write_json_atomic(path, manifest)
    return path


def _try_write_manifest(sweep_dir: Path, manifest: dict[str, Any], name: str) -> str | None:
    """A local launch's manifest, written if the disk lets it: a full disk or a read-only
    directory must not stop the runs still to start. Returns why it was not written."""
    try:
        _write_manifest(sweep_dir, manifest, name)
    except OSError as e:
        return f"{launches_dir(sweep_dir) / name}: {e}"
    return None


def _manifest_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.time_ns() % 10**9:09d}.json"


def _new_manifest(profile: LaunchProfile, sweep: str, argv: list[str]) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sweep": sweep,
        "profile": profile.name,
        "kind": profile.kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": argv,
        "arrays": [],
        "jobs": [],
    }


class SubmitError(RuntimeError):
    """sbatch refused an array; the message says which arrays (if any) were already queued."""


def array_limits(sizes: list[int], limit: int) -> list[tuple[int, int | None]]:
    """(task parallelism, index of the array it waits for) per array, so that one launch runs
    at most ``limit`` tasks at once however many arrays it is split into: the limit shared out
    (no array gets more than its tasks; the shares sum to the limit), or, with more arrays
    than the limit, one task at a time each and array i after array i - limit has ended."""
    if len(sizes) > limit:
        return [(1, i - limit if i >= limit else None) for i in range(len(sizes))]
    shares, left = [0] * len(sizes), limit
    while left and (open_ := [i for i, n in enumerate(sizes) if shares[i] < n]):
        each = max(1, left // len(open_))
        for i in open_:
            give = min(each, sizes[i] - shares[i], left)
            shares[i], left = shares[i] + give, left - give
    return [(max(1, share), None) for share in shares]


def submit_slurm(
    runs: list[PlannedRun], profile: LaunchProfile, sweep: str, argv: list[str]
) -> dict[str, Any]:
    """Submit ``runs`` as job arrays (one sbatch per chunk) and record them in a manifest.

    The profile's array_parallelism bounds the whole launch (array_limits). An array sbatch
    refuses is a SubmitError; the files submitit wrote for it are removed, and the arrays
    queued before it are in the manifest."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    sweep_dir = runs[0].run_dir.parent
    folder = Path(profile.folder) if profile.folder else sweep_dir / SUBMITIT_DIR
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    manifest = _new_manifest(profile, sweep, argv)
    name = _manifest_name()
    held: list[tuple[PlannedRun, str]] = []
    arrays = job_arrays(runs, profile)
    limits = array_limits([len(chunk) for _, chunk in arrays], profile.array_parallelism)
    try:
        for index, ((shape, chunk), (parallel, after)) in enumerate(
            zip(arrays, limits, strict=True)
        ):
            waits = None if after is None else manifest["arrays"][after]
            executor.update_parameters(**executor_parameters(shape, parallel, waits))
            before = set(folder.iterdir()) if folder.is_dir() else set()
            try:
                with executor.batch():
                    jobs = [executor.submit(TrainRun(run.overrides)) for run in chunk]
            except (FailedJobError, FailedSubmissionError, OSError) as e:
                for left in set(folder.iterdir()) - before:  # its pickles and sbatch script
                    if left.is_file():
                        left.unlink()
                if not any(folder.iterdir()):
                    folder.rmdir()  # nothing was queued from it
                queued = ", ".join(manifest["arrays"]) or "none"
                raise SubmitError(
                    f"sbatch refused array {index + 1} of {len(arrays)} ({len(chunk)} runs): "
                    f"{str(e).strip() or type(e).__name__}; arrays already queued: {queued}"
                ) from e
            if shape.additional_parameters.get("hold"):
                held += [(run, job.job_id) for run, job in zip(chunk, jobs, strict=True)]
            manifest["arrays"].append(jobs[0].job_id.split("_")[0])
            for run, job in zip(chunk, jobs, strict=True):
                manifest["jobs"].append(
                    {
                        "run_key": run.run_key,
                        "job_id": job.job_id,
                        "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr),
                    }
                )
    finally:
        if manifest["jobs"]:
            _write_manifest(sweep_dir, manifest, name)
        hold_for_parents(held)
    return manifest


def _local_command(run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "qat_sweep.train", *run.overrides]


def twins_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The local order: cell by cell, cheapest cell first, each BF16 twin before its quantized
    runs, so the first deltas exist after a few runs instead of at the end of the sweep."""
    keys = {r.run_key for r in runs}

    def cell(run: PlannedRun) -> str:
        return run.run_key if run.scheme == BF16 else twin_key(run.config)

    cost = {cell(r): r.model_flops for r in runs if r.scheme == BF16 or cell(r) not in keys}
    return sorted(runs, key=lambda r: (cost.get(cell(r), r.model_flops), cell(r), r.scheme != BF16))


LOCAL_POLL_S = 2.0  # how often a launch waiting for free slots looks again
STOP_WAIT_S = 120.0  # after Ctrl-C, how long trainers get to checkpoint before they are killed


def run_local(
    runs: list[PlannedRun], profile: LaunchProfile, sweep: str, argv: list[str]
) -> dict[str, Any]:
    """Run each run in its own process, ``max_parallel`` at a time, BF16 twins first
    (`twins_first`) and parents before their children, each child once its branch checkpoint
    exists (``BranchGate``); waits, prints each outcome and delta as it comes, then a closing
    summary.

    Trainers still running from an earlier launch of the sweep (its launcher killed) hold
    their run locks: they count against ``max_parallel``. Ctrl-C stops cleanly: no new run
    starts, running trainers get SIGTERM (they checkpoint at a step boundary and exit), and a
    summary says what a relaunch resumes; ``manifest["interrupted"]`` is then True.
    A manifest the disk refuses is reported, and the runs go on.
    """
    runs = parents_first(twins_first(runs))
    gate = BranchGate(runs)
    sweep_dir = runs[0].run_dir.parent
    logs = launches_dir(sweep_dir) / LAUNCH_LOGS
    manifest = _new_manifest(profile, sweep, argv)
    manifest["jobs"] = [
        {"run_key": r.run_key, "job_id": None, "log": str(logs / f"{r.run_key}.log")} for r in runs
    ]
    name = _manifest_name()
    unwritten: list[str] = []  # why the manifest could not be written, each time it failed

    def save() -> None:
        if (problem := _try_write_manifest(sweep_dir, manifest, name)) is not None:
            if not unwritten:
                print(
                    f"[qat-sweep] warning: cannot write the launch manifest {problem}; "
                    "the runs go on",
                    file=sys.stderr,
                    flush=True,
                )
            unwritten.append(problem)

    save()
    env = {**os.environ, **profile.env}
    lock, stopping = threading.Lock(), threading.Event()
    done = [0]
    active: dict[str, subprocess.Popen[bytes]] = {}  # run_key -> its trainer, while it runs

    def start(run: PlannedRun, log: str) -> subprocess.Popen[bytes] | None:
        """Start ``run`` once fewer than max_parallel trainers of the sweep run (None: stopping)."""
        told = False
        while not stopping.is_set():
            with lock:
                busy = len(active) + _trainers_elsewhere(sweep_dir, set(active))
                if busy < profile.max_parallel:
                    # its own session: Ctrl-C in the terminal reaches the launcher, which stops
                    # each trainer with SIGTERM (a checkpoint) rather than SIGINT (a traceback)
                    with open(log, "ab") as out:
                        proc = subprocess.Popen(
                            _local_command(run), stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True,
                        )  # fmt: skip
                    active[run.run_key] = proc
                    return proc
            if not told:
                print(
                    f"waiting: {busy} trainer(s) of this sweep running (max_parallel="
                    f"{profile.max_parallel}), some from an earlier launch",
                    flush=True,
                )
                told = True
            stopping.wait(LOCAL_POLL_S)
        return None

    def one(index: int) -> int | None:
        run, job = runs[index], manifest["jobs"][index]
        held = gate.wait(run, stopping)
        if held is not None:
            with lock:
                job["held"], done[0], outcomes[run.run_key] = held, done[0] + 1, held
                print(f"[{done[0]}/{len(runs)}] {run.run_key} {held}", flush=True)
                _write_manifest(sweep_dir, manifest, name)
            gate.finished(run)
            return 1
        record = None
        try:
            logs.mkdir(parents=True, exist_ok=True)
            proc = start(run, job["log"])
        except OSError as e:  # full disk, read-only directory: the run cannot start here
            begin, code, job["error"] = (
                time.monotonic(),
                1,
                f"not started: cannot open its log ({e})",
            )
        else:
            if proc is None:
                gate.finished(run)
                return None
            begin = time.monotonic()
            with lock:
                job["job_id"] = f"local:{proc.pid}"
            code = proc.wait()
            record = read_record(run.run_dir)
        gate.finished(run)
        with lock:
            active.pop(run.run_key, None)  # a run that never started is not there
            job["exit_code"] = code
            done[0] += 1
            outcomes[run.run_key] = job.get("error") or _outcome(record, code, job["log"])
            print(
                f"[{done[0]}/{len(runs)}] {run.run_key} {outcomes[run.run_key]} "
                f"({format_duration(time.monotonic() - begin)})",
                flush=True,
            )
            for key, line in _new_deltas(record, sweep_dir):
                if key not in shown:  # a pair finishing together is seen by both
                    shown.add(key)
                    print(f"  {line}", flush=True)
            save()
        return code

    started = time.monotonic()
    outcomes: dict[str, str] = {}
    shown: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=profile.max_parallel)
    futures = [pool.submit(one, i) for i in range(len(runs))]
    try:
        codes = [f.result() for f in futures]
    except KeyboardInterrupt:
        codes = _stop_local(futures, active, lock, stopping)
        manifest["interrupted"] = True
    pool.shutdown(wait=True)
    manifest["failed"] = sum(1 for c in codes if c not in (0, None))
    save()
    if manifest.get("interrupted"):
        stopped = sum(1 for c in codes if c == EXIT_PREEMPTED)
        print(
            f"interrupted after {format_duration(time.monotonic() - started)}: "
            f"{sum(c == 0 for c in codes)} run(s) completed, {stopped} stopped after a "
            f"checkpoint, {sum(c is None for c in codes)} not started; launch again to "
            "resume them",
            flush=True,
        )
        return manifest
    failed = [r for r, c in zip(runs, codes, strict=True) if c != 0]
    print(
        f"local launch done in {format_duration(time.monotonic() - started)}: "
        f"{len(runs) - len(failed)} completed, {len(failed)} failed"
        + (", by reason:" if failed else ""),
        flush=True,
    )
    for line in reason_groups(failed, lambda r: outcomes[r.run_key]):
        print(line, flush=True)
    if unwritten:
        print(
            f"[qat-sweep] the launch manifest could not be written ({unwritten[-1]}): "
            "`status` cannot show these runs' jobs, only their records",
            file=sys.stderr,
        )
    return manifest


def _stop_local(
    futures: list[Any],
    active: dict[str, subprocess.Popen[bytes]],
    lock: threading.Lock,
    stopping: threading.Event,
) -> list[int | None]:
    """After Ctrl-C: start nothing more, SIGTERM each trainer (it checkpoints and exits), wait
    for them; a second Ctrl-C, or STOP_WAIT_S, kills those still running."""
    stopping.set()
    with lock:
        procs = list(active.values())
    print(
        f"\nstopping: {len(procs)} running trainer(s) checkpoint and exit (Ctrl-C again to "
        "kill them)",
        flush=True,
    )
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return [f.result() for f in futures]


def _trainers_elsewhere(sweep_dir: Path, mine: set[str]) -> int:
    """Trainers holding a run of this sweep that this launch did not start (an earlier
    launch whose launcher was killed, or a run started by hand)."""
    if not sweep_dir.is_dir():
        return 0
    return sum(
        1
        for run_dir in sweep_dir.iterdir()
        if run_dir.name not in mine and is_held(run_lock_path(run_dir))
    )


def _new_deltas(record: dict[str, Any] | None, sweep_dir: Path) -> list[tuple[str, str]]:
    """The deltas a run's completion makes known: its own against its BF16 twin, or, for a
    twin, its quantized runs' that completed before it."""
    if record is None or record["status"] != "completed":
        return []
    if record["scheme"] == BF16:
        pairs = [(other, record) for other in quantized_twins(record, sweep_dir)]
    else:
        pairs = [(record, twin_record(record, sweep_dir))]
    lines = []
    for quantized, twin in pairs:
        gap = twin_gap(quantized["loss"], twin, str(quantized.get("twin_key")))
        if not math.isnan(gap.delta):
            lines.append(
                (
                    quantized["run_key"],
                    f"delta {gap.delta:+.4f} = {format_loss(quantized['loss'])} - BF16 "
                    f"{format_loss(gap.bf16_loss)}: {quantized['run_key']}"
                    + (f" ({gap.excluded})" if gap.excluded else ""),
                )
            )
    return lines


def _outcome(record: dict[str, Any] | None, code: int, log: str) -> str:
    if code == EXIT_PREEMPTED and (record is None or record["status"] != "completed"):
        return "stopped after a checkpoint (a relaunch resumes it)"
    if record is None:
        return f"failed (exit {code}, no record; log {log})"
    if record["status"] == "completed":
        return (
            f"completed loss {format_loss(record['loss'])} "
            f"val_loss {format_loss(record.get('val_loss'))}"
        )
    return f"{record['status']}: {record.get('error')} (log {log})"
