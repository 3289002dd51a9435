"""`qat-sweep status sweep=NAME [--runs | --json] [--watch[=SECONDS]]`: one screen of where the
sweep is (counts per sub-grid and model, GPU-hours done, ETA, failures by reason); `--runs`
lists every open run with its progress and each failure with its log."""

from __future__ import annotations

import json
import math
import sys

from qat_sweep.commands.args import parse_cli
from qat_sweep.common import command_hint
from qat_sweep.sweep.jobs import attach_status
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.profiles import (
    load_profile,
)
from qat_sweep.sweep.spec import PlanError
from qat_sweep.sweep.status import status_rows, status_summary, status_table, watch


def _watch_period(value: str | None) -> float:
    try:
        every = float(value or 10)
    except ValueError:
        every = math.nan
    if not every > 0:
        raise PlanError(f"--watch={value}: give the refresh period in seconds > 0, e.g. --watch=30")
    return every


def main(argv: list[str]) -> int:
    """``qat-sweep status sweep=NAME [launcher=PROFILE] [--runs|--json] [--watch[=S]] [overrides]``."""
    try:
        sweep, options, flags, overrides = parse_cli(argv, ("--json", "--watch", "--runs"))
        every = _watch_period(options.get("--watch"))
        if "launcher" in options:  # the runs as launched with it: under its paths.runs
            overrides = [*overrides, *load_profile(options["launcher"]).train_overrides()]
        runs = plan_sweep(sweep, overrides, strict=False)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--json" in flags:
        print(json.dumps(status_rows(runs), indent=1))
        return 0
    relaunch = command_hint(
        "launch", argv, *([] if "launcher" in options else ["launcher=PROFILE"])
    )
    every_run = command_hint("status", argv, "--runs")

    def screen() -> str:
        if "--runs" in flags:
            return status_table(runs)
        return status_summary(runs, relaunch, every_run)

    if "--watch" in flags:

        def refreshed() -> str:
            attach_status(runs)
            return screen()

        watch(refreshed, every)
    else:
        print(screen())
    return 0
