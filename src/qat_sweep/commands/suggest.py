"""`qat-sweep suggest --fit DIR sweep=NAME --target ...`: the next runs worth their GPU-hours,
written as a sweep file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.suggest import suggest
from qat_sweep.commands.args import split_cli
from qat_sweep.common import format_count, format_hours, quiet_progress


def _parser() -> argparse.ArgumentParser:
    from qat_sweep.analysis.predict import fit_reader_parser

    p = fit_reader_parser(
        "qat-sweep suggest",
        "The next runs that most shrink the targets' predicted intervals per "
        "GPU-hour: suggest --fit DIR sweep=NAME --target '...' [--k K] [--budget GPU_HOURS]",
    )
    p.add_argument("--target", action="append", required=True,
                   help="'model=973M tokens=200B scheme=w4a4 format=int4 group_size=128'")  # fmt: skip
    p.add_argument("--k", type=int, help="how many runs (default 10 without --budget)")
    p.add_argument("--budget", type=float, help="GPU-hours to spend, BF16 twins included")
    p.add_argument("--noise", type=float, help="SD of a run's final loss (default: from the fit)")
    p.add_argument(
        "--off-grid",
        action="store_true",
        help="also consider runs the sweep's grid lacks: the target's setting at the model "
        "presets between the grid and the target, at the grid's and the target's tokens per "
        "parameter and group sizes",
    )
    p.add_argument(
        "--out", type=Path, help="sweep file directory (default reports/<sweep>/suggest)"
    )
    return p


def format_suggestion(res: dict[str, Any]) -> str:
    lines = [f"criterion: {res['criterion']}; loss noise {res['noise']:.3g} per run"]
    if res.get("laws"):
        laws = ", ".join(f"{k} {v}" for k, v in res["laws"].items())
        lines.append(f"delta law: {laws} ({res.get('law_source', 'selected by the fit')})")
    for t in res["targets"]:
        lines.append(
            f"target {t['target']}: expected 95% interval width of delta now "
            f"{100 * t['rel_width_now']:.1f}% of delta, after these runs {100 * t['rel_width_after']:.1f}%"
        )
    lines += [f"note: {n}" for n in res.get("notes", [])]
    lines += ["", f"{'run_key':<58} {'N':>7} {'D':>6} {'scheme':<10} {'G':>7} {'GPU-h':>8} "
              f"{'width after':>11} {'gain/GPU-h':>10}"]  # fmt: skip
    for r in res["runs"]:
        gain = r.get("expected_gain")
        tail = (
            f"{100 * gain['rel_width_after']:>10.1f}% {100 * gain['gain_per_gpu_hour']:>9.3g}%"
            if gain
            else f"{'(BF16 twin)':>22}"
        )
        mark = "*" if r.get("off_grid") else " "
        lines.append(
            f"{r['run_key'] + mark:<58} {format_count(r['n_params'], 3):>7} "
            f"{format_count(r['tokens'], 3):>6} {r['scheme']:<10} {r['group_size'] or '-'!s:>7} "
            f"{format_hours(r['gpu_hours']):>8} {tail}"
        )
    if any(r.get("off_grid") for r in res["runs"]):
        lines.append(
            "* off the sweep's grid: every other setting from the sweep's run of that setting "
            "nearest in N (a learning rate the sweep does not set is the model preset's)"
        )
    lines += [
        "",
        f"total {len(res['runs'])} runs, {format_hours(res['gpu_hours'])} GPU-hours; "
        f"sweep file: {res['sweep_file']}",
        f"launch them: {res['launch']}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`qat-sweep suggest`; returns the exit code."""
    try:
        args, extra = _parser().parse_known_args(argv)
        if args.json:
            quiet_progress()
        sweep, mfu, peak, overrides = split_cli(extra, "suggest")
        if args.k is not None and args.k < 1:
            raise InputError(f"--k {args.k}: need at least 1")
        if args.budget is not None and args.budget <= 0:
            raise InputError(f"--budget {args.budget}: need a positive number of GPU-hours")
        targets = [sim.parse_target(t) for t in args.target]
        res = suggest(
            args.fit, sweep, targets, overrides=overrides, mfu=mfu, peak_tflops=peak,
            k=args.k, budget=args.budget, noise=args.noise, out=args.out, law=args.law,
            off_grid=args.off_grid,
        )  # fmt: skip
    except InputError as err:
        print(f"qat-sweep suggest: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if "--json" in argv else format_suggestion(res))
    return 0
