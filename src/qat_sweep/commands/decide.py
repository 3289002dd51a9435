"""`qat-sweep decide --fit DIR model=... tokens=...`: decisions from a fitted law (best group size
and best fitted format under a memory budget, tokens to a delta tolerance, INT4 vs FP4,
effective parameters)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.decide import (
    DEFAULT_BITS,
    DEFAULT_SCALE_BITS,
    DEFAULT_TOLERANCE,
    Question,
    decisions,
)
from qat_sweep.analysis.predict import (
    SavedFit,
    fit_reader_parser,
)
from qat_sweep.common import bounded_arg


def _parser() -> argparse.ArgumentParser:
    p = fit_reader_parser(
        "qat-sweep decide",
        "Decisions from a fitted law: decide --fit DIR (model=NAME | n_params=N "
        "[hidden_size=H]) tokens=D [scheme=w4a4 format=int4 group_size=128]",
    )
    p.add_argument(
        "--bits",
        type=bounded_arg(0, low_open=True),
        default=DEFAULT_BITS,
        help="memory budget, bits/weight",
    )
    p.add_argument(
        "--scale-bits",
        type=bounded_arg(0, low_open=True),
        default=DEFAULT_SCALE_BITS,
        help="bits per scale",
    )
    p.add_argument(
        "--tolerance",
        type=bounded_arg(0, low_open=True),
        default=DEFAULT_TOLERANCE,
        help="delta tolerance",
    )
    return p


def question(argv: list[str]) -> tuple[argparse.Namespace, Question]:
    from qat_sweep.analysis.design.simulate import parse_target

    args, extra = _parser().parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        raise InputError(f"unexpected argument(s) {bad} (see qat-sweep decide --help)")
    target = parse_target(" ".join(extra))  # same keys, checks and ranges as design/suggest
    q = Question(
        target.n_params, target.tokens, target.hidden_size, target.fit_key, target.group_size,
        args.bits, args.scale_bits, args.tolerance, args.law,
    )  # fmt: skip
    return args, q


def _ci(item: dict[str, Any] | None, fmt: str = "{:.4g}") -> str:
    ci = (item or {}).get("ci95")
    ends = [fmt.format(v) if v is not None else "never" for v in ci] if ci else None
    return f"[{ends[0]}, {ends[1]}]" if ends else "n/a"


def format_decisions(res: dict[str, Any]) -> str:
    bg, tt, cx, eff = (
        res[k] for k in ("best_group_size", "tokens_to_tolerance", "int4_vs_fp4", "eff_multiplier")
    )
    bf = res["best_format"]
    how = "forced with --law" if res.get("law_source") == "--law" else "selected by the fit"
    lines = [
        f"N = {res['n_params']:.4g}, D = {res['tokens']:.4g}, setting {res['setting']}, "
        f"delta law {res.get('law', 'paper')} ({how})",
        f"best group size under {bg['bits_budget']:g} bits/weight ({bg['scale_bits']:g}-bit scales): "
        f"G = {bg['group_size']} ({bg['bits_per_weight']:.3f} bits), chosen by "
        + (f"{100 * bg['share_of_draws']:.0f}% of bootstrap draws" if bg["share_of_draws"] is not None else "no bootstrap draws")
        + f"; delta {bg['delta']['value']:.4f} "
        f"{_ci(bg['delta'])}, QAT loss {bg['qat_loss']['value']:.4f} {_ci(bg['qat_loss'])}",
        (
            f"best fitted format under {bf['bits_budget']:g} bits/weight (each with its own scale "
            f"bits): {bf['setting']} G = {bf['group_size']} ({bf['bits_per_weight']:.3f} bits), "
            f"delta {bf['delta']:.4f}, chosen by "
            + (f"{100 * bf['share_of_draws']:.0f}% of bootstrap draws" if bf["share_of_draws"] is not None else "no bootstrap draws")
            + "; " + ", ".join(f"{c['setting']} G={c['group_size']} ({c['bits_per_weight']:.3f} bits) {c['delta']:.4f}"
                               for c in sorted(bf["candidates"], key=lambda c: c["delta"])[:6])
            if bf["available"] else f"best format: not available ({bf['missing']})"
        ),
        f"tokens at which delta reaches {tt['tolerance']:g} (G = {tt['group_size']}): "
        + (f"{tt['tokens']:.3g} ({tt['tokens_per_param']:.3g} per parameter) {_ci(tt, '{:.3g}')}" if tt["tokens"] else "never (delta does not grow with D)"),
        "INT4 vs FP4: "
        + (
            (f"crossover at G = {cx['group_size']:.3g} {_ci(cx, '{:.3g}')}, {cx['better_below']} better below it; "
             if cx["group_size"] else "no crossover; ")
            + f"INT4 - FP4 at G = {cx['int4_minus_fp4_at_G']['group_size']}: "
            f"{cx['int4_minus_fp4_at_G']['value']:+.4f} {_ci(cx['int4_minus_fp4_at_G'])}"
            if cx["available"] else f"not available ({cx['missing']})"
        ),
        f"effective parameter multiplier (G = {eff['group_size']}): {eff['value']:.3f} {_ci(eff, '{:.3f}')}",
    ]  # fmt: skip
    warnings = [*bg["warnings"], *bf.get("warnings", []), *tt["warnings"], *cx.get("warnings", [])]
    lines += [f"warning: {w}" for w in dict.fromkeys(warnings)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`qat-sweep decide`; returns the exit code."""
    try:
        args, q = question(argv)
        res = decisions(SavedFit.load(args.fit), q)
    except InputError as err:
        print(f"qat-sweep decide: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if args.json else format_decisions(res))
    return 0
