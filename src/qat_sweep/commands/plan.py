"""`qat-sweep plan sweep=NAME [launcher=PROFILE] [--runs | --json]`: every run of a sweep, validated;
where its compute goes per model and sub-grid (and, with a launch profile, GPUs, memory and wall
time); `--runs` lists every run, `--json` gives the plan rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qat_sweep.commands.args import cost_options, parse_cli
from qat_sweep.common import command_hint, format_count, format_hours, wants_help
from qat_sweep.config.checks import data_problems
from qat_sweep.estimates.flops import MODEL_COUNT, PAPER_LABEL
from qat_sweep.sweep.branches import branch_costs
from qat_sweep.sweep.plan import load_sweep, plan_sweep
from qat_sweep.sweep.spec import PlannedRun
from qat_sweep.sweep.summary import (
    Column,
    counts_line,
    grouped_table,
    share,
    token_values,
    wrap,
)


def _fmt_group(group_size: Any) -> str:
    return "-" if group_size is None else str(group_size)


def plan_summary(runs: list[PlannedRun], mfu: float, peak_tflops: float) -> list[str]:
    """Where the compute goes, per model and per sub-grid, in lines of at most 100 columns."""
    sized = any(r.sizing is not None for r in runs)
    quantized = sum(r.scheme != "bf16" for r in runs)

    def hours(group: list[PlannedRun]) -> float:
        """As the runs are trained: a branched run from its branch step (sweep/branches.py)."""
        return sum(r.gpu_hours(mfu, peak_tflops) * r.own_fraction for r in group)

    total = hours(runs)

    common = [
        Column(PAPER_LABEL, 10, lambda g: f"{sum(r.flops for r in g):.2e}"),
        Column("GPU-h", 8, lambda g: format_hours(hours(g))),
        Column("share", 6, lambda g: share(hours(g), total)),
    ]
    by_model = [
        Column("N", 7, lambda g: format_count(g[0].n_params, 3)),
        Column("runs", 4, lambda g: str(len(g))),
        Column("tokens", 17, token_values),
        *common,
    ]
    if sized:
        by_model += [
            Column("GPUs", 4, lambda g: "/".join(sorted({str(r.sizing.gpus) for r in g}))),
            Column("GB/GPU", 6, lambda g: f"{max(r.sizing.memory_gb for r in g):.1f}"),
            Column("wall-h", 6, lambda g: _max_wall(g)),
        ]
    by_subgrid = [
        Column("runs", 4, lambda g: str(len(g))),
        Column("BF16", 4, lambda g: str(sum(r.scheme == "bf16" for r in g))),
        *common,
        Column("status", 30, counts_line, left=True),
    ]
    lines = [
        f"{len(runs)} runs ({quantized} quantized + {len(runs) - quantized} BF16), "
        f"{format_hours(total)} GPU-hours at mfu={mfu:g} x {peak_tflops:g} TFLOP/s",
        *_branches_note(runs, mfu, peak_tflops),
        "",
        *grouped_table(runs, lambda r: r.model, by_model, "model"),
        "",
        *grouped_table(runs, lambda r: r.subgrid, by_subgrid, "sub-grid"),
        "",
        *wrap(
            f"{PAPER_LABEL}: the paper's compute (N non-embedding); GPU-hours: the model FLOPs "
            f"train's MFU counts, {MODEL_COUNT} (x4/3 with activation checkpointing)"
        ),
    ]
    if sized:
        lines += wrap(_sized_note(runs))
    return lines


def _branches_note(runs: list[PlannedRun], mfu: float, peak_tflops: float) -> list[str]:
    costs = branch_costs(runs, mfu, peak_tflops)
    if costs is None:
        return []
    return wrap(
        f"branches: {costs.children} runs start from a parent's checkpoint ({costs.trunks} "
        f"WSD trunks): {format_hours(costs.branched)} GPU-hours as branched, "
        f"{format_hours(costs.independent)} as independent runs "
        f"({100 * (1 - costs.branched / costs.independent):.0f}% saved)"
    )


def _max_wall(group: list[PlannedRun]) -> str:
    walls = [r.sizing.wall_h for r in group if r.sizing.wall_h is not None]
    return format_hours(max(walls)) if walls else "-"


def _sized_note(runs: list[PlannedRun]) -> str:
    timed = [r.sizing for r in runs if r.sizing is not None and r.sizing.wall_h is not None]
    return (
        f"sized: {format_hours(sum(s.wall_h * s.gpus for s in timed))} GPU-hours of wall clock "
        f"({format_hours(sum(s.wall_h for s in timed))} run-hours, "
        f"{sum(s.segments for s in timed)} time-limit segments), peak memory per GPU up to "
        f"{max(r.sizing.memory_gb for r in runs if r.sizing):.1f} GB; wall-h is the longest run"
    )


def plan_table(runs: list[PlannedRun], mfu: float, peak_tflops: float) -> str:
    """``--runs``: every run, grouped by sub-grid, with its compute (and sizing)."""
    sized = any(r.sizing is not None for r in runs)
    header = f"{'run_key':<58} {'N':>7} {'D':>5} {'G':>7} {PAPER_LABEL:>10} {'GPU-h':>8}"
    header += f" {'micro':>5} {'par':>6} {'GPUs':>4} {'GB/GPU':>6} {'wall-h':>6} {'seg':>3}" * sized
    header += " status"
    lines = []
    for sub in dict.fromkeys(r.subgrid for r in runs):
        group = [r for r in runs if r.subgrid == sub]
        hours = sum(r.gpu_hours(mfu, peak_tflops) * r.own_fraction for r in group)  # as run
        lines += ["", f"## {sub}: {len(group)} runs, {format_hours(hours)} GPU-hours", header]
        for r in group:
            lines.append(
                f"{r.run_key:<58} {format_count(r.n_params, 3):>7} "
                f"{format_count(r.tokens, 3):>5} {_fmt_group(r.group_size):>7} "
                f"{r.flops:>10.2e} {format_hours(r.gpu_hours(mfu, peak_tflops)):>8}"
                f"{_sizing_cells(r)} {r.status}"
            )
    return "\n".join(lines[1:])


def _sizing_cells(run: PlannedRun) -> str:
    s = run.sizing
    if s is None:
        return ""
    wall = "-" if s.wall_h is None else format_hours(s.wall_h)
    return (
        f" {s.micro_batch_seqs:>5} {s.parallelism:>6} {s.gpus:>4} {s.memory_gb:>6.1f} "
        f"{wall:>6} {s.segments or '-':>3}"
    )


HELP = """usage: qat-sweep plan sweep=NAME [launcher=PROFILE] [--runs | --json] [mfu=0.4]
                      [peak_tflops=312] [key=value ...]

Every run of a sweep (conf/sweep/NAME.yaml, or a path to a sweep file), validated as `train`
validates one run, and a summary of its compute; nothing is written or launched.

  sweep=NAME         the sweep: a file in conf/sweep/ or a path
  launcher=PROFILE   size each run for a launch profile (launchers/PROFILE.yaml): GPUs,
                     micro-batch, memory per GPU, wall-clock hours
  mfu=, peak_tflops= the cost model of the GPU-hours column
  --runs             every run, grouped by sub-grid, instead of the summary
  --json             one JSON row per run
  key=value          train overrides applied to every run (e.g. paths.runs=DIR)
"""


def main(argv: list[str]) -> int:
    """``qat-sweep plan sweep=NAME [launcher=PROFILE] [--runs|--json] [mfu=0.4] [peak_tflops=312]``.

    With ``launcher=`` every run is sized for the profile's GPUs (``qat_sweep.sweep.sizing``).
    """
    if wants_help(argv):
        print(HELP)
        return 0
    try:
        sweep, options, flags, overrides = parse_cli(argv, ("--json", "--runs"))
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
        print(f"sweep {sweep!r} from {_shown(load_sweep(sweep).path)}")  # a path is never cut
        if "launcher" in options:
            from qat_sweep.sweep.profiles import profile_path

            source = _shown(profile_path(options["launcher"]))
            print(f"launch profile {options['launcher']!r} from {source}")
        if "--runs" in flags:
            print(plan_table(runs, mfu, peak))
        else:
            print("\n".join(plan_summary(runs, mfu, peak)))
            print(f"every run (or --json): {command_hint('plan', argv, '--runs')}")  # never cut
    if missing_data:
        print(f"warning: {len(missing_data)} run(s) cannot be launched yet:", file=sys.stderr)
        for message in sorted(set(missing_data)):
            print("\n".join(wrap(f"  - {message}", "    ")), file=sys.stderr)
    return 0


def _shown(path: Path) -> str:
    """A file as short as it is unambiguous: relative to the working directory when inside it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
