"""`qat-sweep plan sweep=NAME [launcher=PROFILE] [--json]`: every run of a sweep, validated, with its
compute (and, with a launch profile, its GPUs, memory and wall time)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from qat_sweep.commands.args import cost_options, parse_cli
from qat_sweep.common import format_count, wants_help
from qat_sweep.config.checks import (
    data_problems,
)
from qat_sweep.estimates.flops import MODEL_COUNT, PAPER_LABEL
from qat_sweep.sweep.jobs import STATUSES
from qat_sweep.sweep.plan import load_sweep, plan_sweep
from qat_sweep.sweep.spec import (
    PlannedRun,
)


def _fmt_group(group_size: Any) -> str:
    return "-" if group_size is None else str(group_size)


def plan_table(runs: list[PlannedRun], mfu: float, peak_tflops: float) -> str:
    """Human table grouped by sub-grid, with compute estimates and totals.

    Two FLOP counts, each named: the FLOPs column is the paper's 6ND (the law's compute axis),
    GPU-hours come from the model count that train's MFU uses (``estimates.flops``)."""
    sized = any(r.sizing is not None for r in runs)
    header = f"{'run_key':<58} {'preset':>6} {'N':>9} {'D':>7} {'scheme':<11} {'format':<8}"
    header += f" {'G':>7} {'LR':>8} {PAPER_LABEL:>10} {'GPU-h':>8}"
    header += f" {'micro':>5} {'par':>6} {'GPUs':>4} {'GB/GPU':>6} {'wall-h':>7} {'seg':>3}" * sized
    header += " status"
    lines = []
    for sub in dict.fromkeys(r.subgrid for r in runs):
        group = [r for r in runs if r.subgrid == sub]
        hours = sum(r.gpu_hours(mfu, peak_tflops) for r in group)
        lines += ["", f"## {sub}: {len(group)} runs, {_hours(hours)} GPU-hours", header]
        for r in group:
            lines.append(
                f"{r.run_key:<58} {r.model:>6} {format_count(r.n_params):>9} "
                f"{format_count(r.tokens):>7} {r.scheme:<11} {r.format:<8} "
                f"{_fmt_group(r.group_size):>7} {r.lr:>8.2g} {r.flops:>10.2e} "
                f"{_hours(r.gpu_hours(mfu, peak_tflops)):>8}{_sizing_cells(r)} {r.status}"
            )
    counts = Counter(r.status for r in runs)
    total = sum(r.gpu_hours(mfu, peak_tflops) for r in runs)
    quantized = sum(r.scheme != "bf16" for r in runs)
    lines += [
        "",
        f"total: {len(runs)} runs ({quantized} quantized + {len(runs) - quantized} BF16), "
        f"{sum(r.flops for r in runs):.3e} {PAPER_LABEL}, {_hours(total)} GPU-hours "
        f"at mfu={mfu:g} x {peak_tflops:g} TFLOP/s",
        f"{PAPER_LABEL}: the paper's compute (N non-embedding); GPU-hours: the model FLOPs "
        f"train's MFU counts, {MODEL_COUNT} (x4/3 with activation checkpointing)",
        "status: " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]),
    ]
    if sized:
        timed = [r.sizing for r in runs if r.sizing is not None and r.sizing.wall_h is not None]
        lines.insert(
            -1,
            f"sized: {_hours(sum(s.wall_h * s.gpus for s in timed))} GPU-hours of wall clock "
            f"({_hours(sum(s.wall_h for s in timed))} run-hours, {sum(s.segments for s in timed)} "
            f"time-limit segments), peak memory per GPU up to "
            f"{max(r.sizing.memory_gb for r in runs if r.sizing):.1f} GB",
        )
    return "\n".join(lines[1:])


def _sizing_cells(run: PlannedRun) -> str:
    s = run.sizing
    if s is None:
        return ""
    wall = "-" if s.wall_h is None else _hours(s.wall_h)
    return (
        f" {s.micro_batch_seqs:>5} {s.parallelism:>6} {s.gpus:>4} {s.memory_gb:>6.1f} "
        f"{wall:>7} {s.segments or '-':>3}"
    )


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.2g}"


HELP = """usage: qat-sweep plan sweep=NAME [launcher=PROFILE] [--json] [mfu=0.4] [peak_tflops=312]
                      [key=value ...]

Every run of a sweep (conf/sweep/NAME.yaml, or a path to a sweep file), validated as `train`
validates one run, with its compute; nothing is written or launched.

  sweep=NAME         the sweep: a file in conf/sweep/ or a path
  launcher=PROFILE   size each run for a launch profile (launchers/PROFILE.yaml): GPUs,
                     micro-batch, memory per GPU, wall-clock hours
  mfu=, peak_tflops= the cost model of the GPU-hours column
  --json             one JSON row per run instead of the table
  key=value          train overrides applied to every run (e.g. paths.runs=DIR)
"""


def main(argv: list[str]) -> int:
    """``qat-sweep plan sweep=NAME [launcher=PROFILE] [--json] [mfu=0.4] [peak_tflops=312] ...``.

    With ``launcher=`` every run is sized for the profile's GPUs (``qat_sweep.sweep.sizing``).
    """
    if wants_help(argv):
        print(HELP)
        return 0
    try:
        sweep, options, flags, overrides = parse_cli(argv, ("--json",))
        mfu, peak = cost_options(options)
        profile = None
        if "launcher" in options:
            from qat_sweep.sweep.profiles import load_profile, placement
            from qat_sweep.sweep.sizing import size_sweep

            profile = load_profile(options["launcher"])
            overrides = [*overrides, *profile.train_overrides()]
            peak = profile.peak / 1e12 if profile.peak and "peak_tflops" not in options else peak
        devices = placement(profile) if profile is not None else {}
        runs = plan_sweep(sweep, overrides, strict=False, **devices)
        if profile is not None:
            size_sweep(runs, profile, mfu)
        missing_data = list(data_problems({r.run_key: r.config for r in runs}).values())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--json" in flags:
        print(json.dumps([r.row(mfu, peak) for r in runs], indent=1))
    else:
        print(f"sweep {sweep!r} from {load_sweep(sweep).path.resolve()}")
        if "launcher" in options:
            from qat_sweep.sweep.profiles import profile_path

            source = profile_path(options["launcher"]).resolve()
            print(f"launch profile {options['launcher']!r} from {source}")
        print(plan_table(runs, mfu, peak))
    if missing_data:
        print(f"warning: {len(missing_data)} run(s) cannot be launched yet:", file=sys.stderr)
        for message in sorted(set(missing_data)):
            print(f"  - {message}", file=sys.stderr)
    return 0
