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
from qat_sweep.common import format_number


def _parser() -> argparse.ArgumentParser:
    p = fit_reader_parser(
        "qat-sweep decide",
        "Decisions from a fitted law: decide --fit DIR (model=NAME | n_params=N "
        "[hidden_size=H]) tokens=D [scheme=w4a4 format=int4 group_size=128]",
    )
    p.add_argument("--bits", type=float, default=DEFAULT_BITS, help="memory budget, bits/weight")
    p.add_argument("--scale-bits", type=float, default=DEFAULT_SCALE_BITS, help="bits per scale")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="delta tolerance")
    return p


def question(argv: list[str]) -> tuple[argparse.Namespace, Question]:
    from qat_sweep.analysis.design.simulate import parse_target

    args, extra = _parser().parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        raise InputError(f"unexpected argument(s) {bad} (see qat-sweep decide --help)")
    target = parse_target(" ".join(extra))  # same keys, checks and ranges as design/suggest
    if args.scale_bits <= 0:
        raise InputError(f"--scale-bits {args.scale_bits}: need > 0")
    q = Question(
        target.n_params, target.tokens, target.hidden_size, target.fit_key, target.group_size,
        args.bits, args.scale_bits, args.tolerance, args.law,
    )  # fmt: skip
    return args, q


def _ci(item: dict[str, Any] | None, decimals: int | None = 4) -> str:
    ci = (item or {}).get("ci95")
    if not ci:
        return "n/a"
    ends = [format_number(v, decimals) if v is not None else "never" for v in ci]
    return f"[{ends[0]}, {ends[1]}]"


def _shares(item: dict[str, Any]) -> str:
    share = item["share_of_draws"]
    return f"{100 * share:.0f}% of bootstrap draws" if share is not None else "no bootstrap draws"


def _best_group(bg: dict[str, Any]) -> str:
    head = (
        f"best group size under {bg['bits_budget']:g} bits/weight "
        f"({bg['scale_bits']:g}-bit scales): "
    )
    at = (
        f"delta {format_number(bg['delta']['value'], 4)} {_ci(bg['delta'])}, "
        f"QAT loss {format_number(bg['qat_loss']['value'], 4)} {_ci(bg['qat_loss'])}"
    )
    if bg["group_size"] is None:
        return f"{head}no answer: {bg['undecided']}; at the asked G: {at}"
    how = (
        "the only G within the budget"
        if len(bg["allowed"]) == 1
        else f"chosen by {_shares(bg)} among G = {', '.join(bg['allowed'])}"
    )
    return f"{head}G = {bg['group_size']} ({bg['bits_per_weight']:.3f} bits), {how}; {at}"


def _best_format(bf: dict[str, Any]) -> str:
    if not bf["available"]:
        return f"best fitted format: no answer: {bf['missing']}"
    best = sorted(bf["candidates"], key=lambda c: c["delta"])[:6]
    return (
        f"best fitted format under {bf['bits_budget']:g} bits/weight (each with its own scale "
        f"bits): {bf['setting']} G = {bf['group_size']} ({bf['bits_per_weight']:.3f} bits), "
        f"delta {format_number(bf['delta'], 4)}, chosen by {_shares(bf)}; "
        + ", ".join(
            f"{c['setting']} G={c['group_size']} ({c['bits_per_weight']:.3f} bits) "
            f"{format_number(c['delta'], 4)}"
            for c in best
        )
    )


def _tokens(tt: dict[str, Any]) -> str:
    head = f"tokens at which delta reaches {tt['tolerance']:g} (G = {tt['group_size']}): "
    if tt.get("undecided"):
        return head + f"no answer: {tt['undecided']}"
    if not tt["tokens"]:
        return head + "never (delta does not grow with D)"
    return head + (
        f"{format_number(tt['tokens'], digits=3)} ({format_number(tt['tokens_per_param'], digits=3)} "
        f"per parameter) {_ci(tt, None)}"
    )


def _crossover(cx: dict[str, Any]) -> str:
    if not cx["available"]:
        return f"INT4 vs FP4: no answer: {cx['missing']}"
    at = cx["int4_minus_fp4_at_G"]
    where = (
        f"crossover at G = {format_number(cx['group_size'], digits=3)} {_ci(cx, None)}, "
        f"{cx['better_below']} better below it; "
        if cx["group_size"]
        else "no crossover; "
    )
    return f"INT4 vs FP4: {where}INT4 - FP4 at G = {at['group_size']}: {at['value']:+.4f} {_ci(at)}"


def format_decisions(res: dict[str, Any]) -> str:
    bg, bf, tt, cx, eff = (
        res[k]
        for k in (
            "best_group_size", "best_format", "tokens_to_tolerance", "int4_vs_fp4",
            "eff_multiplier",
        )
    )  # fmt: skip
    how = "forced with --law" if res.get("law_source") == "--law" else "selected by the fit"
    lines = [
        f"N = {format_number(res['n_params'])}, D = {format_number(res['tokens'])}, "
        f"setting {res['setting']}, delta law {res.get('law', 'paper')} ({how})",
        _best_group(bg),
        _best_format(bf),
        _tokens(tt),
        _crossover(cx),
        f"effective parameter multiplier (G = {eff['group_size']}): "
        f"{format_number(eff['value'], 3)} {_ci(eff, 3)}",
    ]
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
