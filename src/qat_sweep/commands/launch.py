"""`qat-sweep launch sweep=NAME launcher=PROFILE [--dry-run] [--retry-diverged]`: submit the
missing runs (SLURM job arrays or local processes), under the sweep's launch lock."""

from __future__ import annotations

import contextlib
import sys

from qat_sweep.commands.args import cost_options, parse_cli
from qat_sweep.locks import LockHeld, describe_holder, launch_lock
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
)
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.profiles import (
    LaunchProfile,
    check_against_cluster,
    hydra_launcher_overrides,
    load_profile,
    placement,
)
from qat_sweep.sweep.spec import PlanError, PlannedRun

LAUNCH_FLAGS = ("--dry-run", "--print-hydra-overrides", "--retry-diverged")


def main(argv: list[str]) -> int:
    """``qat-sweep launch sweep=NAME launcher=PROFILE [--dry-run] [--retry-diverged] [overrides]``."""
    try:
        sweep, options, flags, overrides = parse_cli(argv, LAUNCH_FLAGS)
        if "launcher" not in options:
            raise PlanError("missing launcher=PROFILE (a file in launchers/, e.g. launcher=local)")
        profile = load_profile(options["launcher"])
        check_against_cluster(profile)  # --print-hydra-overrides too: the same profile, same limits
        if "--print-hydra-overrides" in flags:
            print(" ".join(hydra_launcher_overrides(profile)))
            return 0
        mfu = cost_options(options)[0]
        extra = [*overrides, *profile.train_overrides()]
        runs = plan_sweep(sweep, extra, strict=True, **placement(profile))
        if profile.kind == "local":
            _check_local_devices(runs)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}\nnothing was launched.", file=sys.stderr)
        return 2
    if _scheduler_silent(runs, sweep):  # planning asked the scheduler already
        return EXIT_LOCKED
    if "--dry-run" in flags:
        return _launch(runs, profile, sweep, argv, flags, mfu)
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


def _launch(
    runs: list[PlannedRun],
    profile: LaunchProfile,
    sweep: str,
    argv: list[str],
    flags: set[str],
    mfu: float,
) -> int:
    """Status under the launch lock (a launch that just ended changed it), size, then submit."""
    attach_status(runs)
    if _scheduler_silent(runs, sweep):
        return EXIT_LOCKED
    try:
        todo = to_launch(runs, retry_diverged="--retry-diverged" in flags)
        from qat_sweep.sweep.sizing import size_sweep  # torch: only on the launch path

        size_sweep(todo, profile, mfu)
        arrays = job_arrays(todo, profile) if profile.kind == "slurm" else []
    except PlanError as e:  # its message says that nothing was launched
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
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
    sweep_dir = runs[0].run_dir.parent
    if "--dry-run" not in flags and (full := disk_problem(sweep_dir)):
        print(
            f"error: {full}: the runs could not write their records; nothing was launched",
            file=sys.stderr,
        )
        return 1
    if "--dry-run" in flags:
        if profile.kind == "slurm":
            sizes = ", ".join(str(len(a)) for _, a in arrays)
            print(f"dry run: would submit {len(arrays)} job array(s) via sbatch (tasks: {sizes})")
            limits = array_limits([len(a) for _, a in arrays], profile.array_parallelism)
            split = ", ".join(
                f"%{n}" + (f" after array {a + 1}" if a is not None else "") for n, a in limits
            )
            print(f"at most {profile.array_parallelism} runs at once (array_parallelism): {split}")
        for run in todo:
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
            f"{', '.join(manifest['arrays'])}; follow with `qat-sweep status sweep={sweep}`"
        )
        return 0
    manifest = run_local(todo, profile, sweep, argv)
    return 1 if manifest["failed"] else 0


def _scheduler_silent(runs: list[PlannedRun], sweep: str) -> bool:
    """Whether the scheduler could not say which runs are queued (then nothing is submitted:
    a second submission would run them twice); says so on stderr."""
    silent = next((r.reason for r in runs if r.status == "unknown"), None)
    if silent is not None:
        unknown = sum(r.status == "unknown" for r in runs)
        print(
            f"error: cannot tell which runs are queued: {silent}; {unknown} run(s) of sweep "
            f"{sweep!r} may be queued or running, so submitting nothing (a second submission "
            "would run them twice). Try again when the scheduler answers "
            f"(`qat-sweep status sweep={sweep}`).",
            file=sys.stderr,
        )
    return silent is not None


def _say_waiting(held: LockHeld) -> None:
    print(f"waiting up to {LAUNCH_LOCK_WAIT_S:.0f} s: {held}", flush=True)
