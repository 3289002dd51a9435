"""`qat-sweep launch sweep=NAME launcher=PROFILE [--dry-run] [--retry-diverged]`: submit the
missing runs (SLURM job arrays or local processes), under the sweep's launch lock."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from qat_sweep.commands.args import cost_options, parse_cli
from qat_sweep.common import command_hint, format_hours, wants_help
from qat_sweep.config.checks import data_problems
from qat_sweep.locks import LockHeld, describe_holder, launch_lock
from qat_sweep.record import SUBMITIT_DIR
from qat_sweep.sweep.jobs import STATUSES, attach_status, disk_problem
from qat_sweep.sweep.launch import (
    EXIT_LOCKED,
    LAUNCH_LOCK_WAIT_S,
    SubmitError,
    _check_local_devices,
    array_limits,
    job_arrays,
    run_local,
    submit_slurm,
    to_launch,
    twins_first,
)
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.preview import SLURM_DEFAULT_MAX_ARRAY_SIZE, sbatch_script
from qat_sweep.sweep.profiles import (
    LaunchProfile,
    check_against_cluster,
    hydra_launcher_overrides,
    load_profile,
    placement,
)
from qat_sweep.sweep.reuse import completed_elsewhere, reuse
from qat_sweep.sweep.slurm_limits import SchedulerUnreachable, slurm_output
from qat_sweep.sweep.spec import PlanError, PlannedRun

LAUNCH_FLAGS = ("--dry-run", "--print-hydra-overrides", "--retry-diverged")


HELP = """usage: qat-sweep launch sweep=NAME launcher=PROFILE [--dry-run] [--retry-diverged]
                        [--print-hydra-overrides] [key=value ...]

Submit the runs of a sweep that have no completed record and are not queued or running: SLURM
job arrays (launcher kind slurm) or processes on this machine (kind local, max_parallel at a
time). Every run is validated first; a bad one launches nothing.

  sweep=NAME               the sweep: a file in conf/sweep/ or a path
  launcher=PROFILE         launchers/PROFILE.yaml or a path (e.g. launcher=local)
  --dry-run                print what would be submitted (the sbatch scripts), submit
                           nothing; needs no scheduler and no prepared data
  --retry-diverged         also rerun diverged runs (kept out by default)
  --print-hydra-overrides  the hydra/launcher overrides of the profile, for `train -m`
  key=value                train overrides applied to every run (e.g. paths.runs=DIR)
"""


def main(argv: list[str]) -> int:
    """``qat-sweep launch sweep=NAME launcher=PROFILE [--dry-run] [--retry-diverged] [overrides]``.

    ``--dry-run`` needs no scheduler and no prepared data: it prints what would be submitted."""
    if wants_help(argv):
        print(HELP)
        return 0
    try:
        sweep, options, flags, overrides = parse_cli(argv, LAUNCH_FLAGS)
        if "launcher" not in options:
            raise PlanError("missing launcher=PROFILE (a file in launchers/, e.g. launcher=local)")
        profile = load_profile(options["launcher"])
        dry = "--dry-run" in flags
        offline = _offline_why(profile) if dry else None
        if offline is None:  # --print-hydra-overrides too: the same profile, same limits
            check_against_cluster(profile)
        if "--print-hydra-overrides" in flags:
            print(" ".join(hydra_launcher_overrides(profile)))
            return 0
        mfu = cost_options(options)[0]
        extra = [*overrides, *profile.train_overrides()]
        runs = plan_sweep(sweep, extra, strict=not dry, **placement(profile))
        if profile.kind == "local":
            _check_local_devices(runs)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}\nnothing was launched.", file=sys.stderr)
        return 2
    if _scheduler_silent(runs, sweep, dry):  # planning asked the scheduler already
        return EXIT_LOCKED
    if dry:
        print("dry run: nothing is submitted, run or copied")
        if offline:
            print(
                f"no SLURM cluster answers here ({offline}): the profile is not checked against "
                "a partition, and arrays split at the profile's max_array_size or SLURM's default"
            )
        missing_data = sorted(set(data_problems({r.run_key: r.config for r in runs}).values()))
        for message in missing_data:
            print(f"warning: a real launch refuses until the data is ready: {message}")
        return _launch(runs, profile, sweep, argv, flags, mfu, offline=offline is not None)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                launch_lock(runs[0].run_dir.parent, LAUNCH_LOCK_WAIT_S, on_wait=_say_waiting)
            )
        except OSError as e:  # a read-only or full sweep directory: nothing can be recorded
            print(f"error: cannot take the launch lock: {e}; nothing was launched", file=sys.stderr)
            return 1
        except LockHeld as held:
            print(
                f"error: another launch of sweep {sweep!r} is still running "
                f"({describe_holder(held.holder)}); nothing was launched. Try again when it "
                "ends (a launch that died has already released its lock).",
                file=sys.stderr,
            )
            return EXIT_LOCKED
        return _launch(runs, profile, sweep, argv, flags, mfu)


def _offline_why(profile: LaunchProfile) -> str | None:
    """Why a dry run of a SLURM profile cannot ask the cluster (None: it can, or not SLURM):
    a preview works from a laptop with no SLURM, or with SLURM's tools but no cluster."""
    if profile.kind != "slurm":
        return None
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH"
    try:
        slurm_output("sinfo", "-h", "-o", "%P")
    except SchedulerUnreachable as e:
        return f"sinfo does not answer: {str(e).splitlines()[0][:160]}"
    return None


def _launch(
    runs: list[PlannedRun],
    profile: LaunchProfile,
    sweep: str,
    argv: list[str],
    flags: set[str],
    mfu: float,
    offline: bool = False,
) -> int:
    """Status under the launch lock (a launch that just ended changed it), reuse runs other
    sweeps completed, size, then submit."""
    attach_status(runs)
    dry = "--dry-run" in flags
    if _scheduler_silent(runs, sweep, dry, quiet=dry):
        return EXIT_LOCKED
    try:
        _reuse_completed(runs, dry)
        todo = to_launch(runs, retry_diverged="--retry-diverged" in flags)
        from qat_sweep.sweep.sizing import size_sweep  # torch: only on the launch path

        size_sweep(todo, profile, mfu, sweep_runs=runs)
        size = None
        if offline:
            size = profile.max_array_size or SLURM_DEFAULT_MAX_ARRAY_SIZE
        arrays = job_arrays(todo, profile, size) if profile.kind == "slurm" else []
    except PlanError as e:  # its message says that nothing was launched
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {e}\nnothing was launched.", file=sys.stderr)
        return 2
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    print(
        f"sweep {sweep}: {len(runs)} runs; "
        + ", ".join(f"{s} {n}" for s, n in counts.items() if n)
        + f"; launching {len(todo)} with profile {profile.name!r} ({profile.kind})"
    )
    retry = "--retry-diverged" in flags
    if not retry and (kept := sum(r.status == "failed" and r.diverged for r in runs)):
        print(
            f"{kept} diverged run(s) not relaunched: the same run diverges again "
            "(`status` lists them; --retry-diverged reruns them, e.g. after a GPU fault)"
        )
    if not todo:
        return 0
    if not dry and (full := disk_problem(runs[0].run_dir.parent)):
        print(
            f"error: {full}: the runs could not write their records; nothing was launched",
            file=sys.stderr,
        )
        return 1
    if dry:
        if profile.kind == "slurm":
            _print_arrays(arrays, profile, command_hint("plan", argv, "--json"))
        else:
            print(f"would run {len(todo)} run(s) here, {profile.max_parallel} at a time, in order:")
            for run in twins_first(todo):
                print(f"  {run.run_key}  {' '.join(run.overrides)}")
        return 0
    if profile.kind == "slurm":
        try:
            manifest = submit_slurm(todo, profile, sweep, argv)
        except SubmitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(
            f"submitted {len(manifest['jobs'])} runs in {len(manifest['arrays'])} array(s): "
            f"{', '.join(manifest['arrays'])}; follow with `{command_hint('status', argv)}`"
        )
        return 0
    manifest = run_local(todo, profile, sweep, argv)
    if manifest.get("interrupted"):
        return EXIT_INTERRUPTED
    return 1 if manifest["failed"] else 0


def _reuse_completed(runs: list[PlannedRun], dry: bool) -> None:
    """Missing runs that another sweep under the same paths.runs completed are copied, not
    retrained (``sweep.reuse``); a dry run only says which."""
    found = {}
    for run in runs:
        fresh = run.status == "missing" and not run.run_dir.exists()
        if fresh and (source := completed_elsewhere(run)) is not None:
            found[run.run_key] = (run, source)
    for run, source in found.values():
        if not dry:
            reuse(run, source)
        run.status = "completed"  # a dry run counts it as a real launch would
    if found:
        sources = sorted({str(source.parent) for _, source in found.values()})
        verb = "would reuse" if dry else "reused"
        print(
            f"{verb} {len(found)} run(s) already completed under the same run_key in "
            f"{', '.join(sources)} (record and metrics copied, with `reused_from`)"
        )


def _print_arrays(
    arrays: list[tuple[LaunchProfile, list[PlannedRun]]], profile: LaunchProfile, rows_hint: str
) -> None:
    """Each job array's sbatch script (submitit's text) beside the runs it holds."""
    sizes = ", ".join(str(len(chunk)) for _, chunk in arrays)
    print(f"would submit {len(arrays)} job array(s) via sbatch (tasks: {sizes})")
    limits = array_limits([len(chunk) for _, chunk in arrays], profile.array_parallelism)
    split = ", ".join(
        f"%{n}" + (f" after array {a + 1}" if a is not None else "") for n, a in limits
    )
    print(f"at most {profile.array_parallelism} runs at once (array_parallelism): {split}")
    for number, ((shape, chunk), (parallel, after)) in enumerate(
        zip(arrays, limits, strict=True), 1
    ):
        folder = Path(shape.folder) if shape.folder else chunk[0].run_dir.parent / SUBMITIT_DIR
        models = ", ".join(dict.fromkeys(r.model for r in chunk))
        print(f"\n=== array {number} of {len(arrays)}: {len(chunk)} runs ({models}) ===")
        waits = None if after is None else f"<array {after + 1}>"
        print(sbatch_script(shape, len(chunk), folder, parallel, waits).rstrip())
        print("# runs: array index, run_key, GPUs, estimated wall-h, time-limit segments")
        for index, run in enumerate(chunk):
            s = run.sizing
            wall = "-" if s.wall_h is None else format_hours(s.wall_h)
            print(f"#  {index:>4} {run.run_key:<58} {s.gpus:>3} {wall:>6} {s.segments or '-':>3}")
    print(f"\neach run's train overrides: {rows_hint}")


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def _scheduler_silent(runs: list[PlannedRun], sweep: str, dry: bool, quiet: bool = False) -> bool:
    """Whether a real launch must stop because the scheduler could not say which runs are
    queued (a second submission would run them twice); says so on stderr. A dry run goes on
    (the unknown runs are not listed) with a warning, unless ``quiet``."""
    silent = next((r.reason for r in runs if r.status == "unknown"), None)
    if silent is None or (dry and quiet):
        return False
    unknown = sum(r.status == "unknown" for r in runs)
    why = f"cannot tell which runs are queued: {silent}; {unknown} run(s) may be queued or running"
    if dry:
        print(f"warning: {why}; a real launch would submit nothing now", file=sys.stderr)
        return False
    print(
        f"error: {why}, so submitting nothing (a second submission would run them twice). "
        f"Try again when the scheduler answers (`qat-sweep status sweep={sweep}`).",
        file=sys.stderr,
    )
    return True


def _say_waiting(held: LockHeld) -> None:
    print(f"waiting up to {LAUNCH_LOCK_WAIT_S:.0f} s: {held}", flush=True)
