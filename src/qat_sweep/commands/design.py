"""`qat-sweep design sweep=NAME`: the intervals a grid is expected to give, by simulating it under
a prior law and refitting each simulated sweep as `fit` would."""

from __future__ import annotations

import argparse
import json
import sys

from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.expected import format_design, noise_level, run_design
from qat_sweep.analysis.design.truth import truth_prior
from qat_sweep.commands.args import split_cli
from qat_sweep.common import quiet_progress


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qat-sweep design",
        description="Simulate a sweep under a prior law and noise, refit each simulated data set "
        "as `fit` would and report the expected intervals: design sweep=NAME [mfu=] "
        "[peak_tflops=] [train overrides]",
    )
    p.add_argument("--prior", default="paper", help="'paper' (Table 1) or a fit directory/json")
    p.add_argument(
        "--law",
        help="from a fit prior, simulate this delta law where the fit has it (default: each "
        "setting's selected law)",
    )
    p.add_argument(
        "--truth",
        metavar="LAW[:p=v,...]",
        help="draw every setting from this delta law (its fit in the prior, else the law closest "
        "to the prior; p=v sets parameters, e.g. levelled_D:c=150) and report how often fit's "
        "law comparison selects it",
    )
    p.add_argument(
        "--noise",
        type=float,
        help=f"SD of each run's final loss (default: from the prior fit's residuals, else {sim.DEFAULT_NOISE})",
    )
    p.add_argument("--cell-noise", type=float, default=0.0, help="SD shared by a cell's twins")
    p.add_argument("--sims", type=int, default=200, help="simulated sweeps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target",
        action="append",
        default=[],
        help="'model=973M tokens=200B scheme=w4a4 format=int4 group_size=128' (repeatable)",
    )
    p.add_argument(
        "--drop",
        action="append",
        default=[],
        help="leave out runs matching all of 'key=value ...', e.g. 'tokens=100B' (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def main(argv: list[str]) -> int:
    """`qat-sweep design`; returns the exit code."""
    try:
        args, extra = _parser().parse_known_args(argv)
        if args.json:
            quiet_progress()
        sweep, mfu, peak, overrides = split_cli(extra, "design")
        if args.sims < 10:
            raise InputError(f"--sims {args.sims}: need at least 10 simulated sweeps")
        if args.cell_noise < 0:
            raise InputError(f"--cell-noise {args.cell_noise}: need >= 0")
        targets = [sim.parse_target(t) for t in args.target]
        prior = sim.load_prior(args.prior, args.law)
        noise = noise_level(args.noise, prior.noise)
        runs = sim.drop_runs(sim.grid_runs(sweep, overrides, mfu, peak), args.drop)
        if args.truth:
            prior = truth_prior(prior, args.truth, runs)
        res = {"sweep": sweep, "drops": args.drop}
        res |= run_design(
            runs, prior, noise, args.sims, args.seed, targets, args.cell_noise,
            select=args.truth is not None,
        )  # fmt: skip
    except InputError as err:
        print(f"qat-sweep design: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if args.json else format_design(res))
    return 0
