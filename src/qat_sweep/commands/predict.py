"""`qat-sweep predict --fit DIR model=... tokens=... scheme=...`: a fitted law's prediction with its
interval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qat_sweep.analysis.collect import (
    InputError,
)
from qat_sweep.common import split_overrides

PREDICT_OVERRIDES = {"model", "n_params", "hidden_size", "tokens", "scheme", "format", "group_size"}


def _predict_parser() -> argparse.ArgumentParser:
    from qat_sweep.analysis.predict import fit_reader_parser

    p = fit_reader_parser(
        "qat-sweep predict",
        "Predict loss with a fitted law: --fit DIR (model=NAME | n_params=N [hidden_size=H]) "
        "tokens=20B scheme=w4a4 format=int4 group_size=128|channel [--seal FILE]",
    )
    p.add_argument(
        "--seal",
        type=Path,
        metavar="FILE",
        help="also write the prediction, its intervals and law, the fit's hash, the code's git "
        "commit and the time to FILE, hashed (never overwrites; put it in <sweep>/predictions/ "
        "so `fit` checks it)",
    )
    return p


def _resolve_model(overrides: dict[str, str]) -> tuple[float, float | None]:
    from qat_sweep.common import parse_count

    n_params = parse_count(overrides["n_params"], "n_params") if "n_params" in overrides else None
    hidden = (
        parse_count(overrides["hidden_size"], "hidden_size") if "hidden_size" in overrides else None
    )
    if "model" in overrides and (n_params is None or hidden is None):
        try:
            from qat_sweep.model.presets import load_preset

            preset = load_preset(overrides["model"])
        except Exception as err:  # unknown preset name or presets module unavailable
            raise InputError(f"cannot resolve model={overrides['model']}: {err}") from err
        n_params = n_params if n_params is not None else float(preset.n_params)
        hidden = hidden if hidden is not None else float(preset.hidden_size)
    if n_params is None:
        raise InputError("give model=PRESET or n_params=N")
    return n_params, hidden


def _group_size(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 2 and value == int(value)):
        raise InputError(f"group_size={text}: allowed an integer >= 2 or channel")
    return int(value)


def main(argv: list[str]) -> int:
    """Run `qat-sweep predict`; returns the process exit code."""
    import json

    from qat_sweep.analysis.predict import SavedFit, format_prediction, predict_point
    from qat_sweep.common import parse_count
    from qat_sweep.model.precision import BLOCK_FORMATS, base_format

    try:
        parser = _predict_parser()
        overrides, rest = split_overrides(argv, PREDICT_OVERRIDES, parser)
        args = parser.parse_args(rest)
        if "tokens" not in overrides:
            raise InputError("tokens= is required (e.g. tokens=20B)")
        n_params, hidden = _resolve_model(overrides)
        scheme = overrides.get("scheme", "bf16").lower()
        fmt = overrides.get("format", "bf16" if scheme == "bf16" else "int4").lower()
        key = None if scheme == "bf16" else f"{scheme}/{fmt}"
        block = BLOCK_FORMATS.get(base_format(fmt))
        group = overrides.get("group_size", str(block.block) if block else None)
        if block and group != str(block.block):
            raise InputError(
                f"group_size={group} with format {fmt}: its block of {block.block} is part of "
                f"the format; allowed: {block.block} (or leave group_size out)"
            )
        if key is not None and group is None:
            raise InputError(
                "group_size= is required for a quantized scheme (an integer or channel)"
            )
        group_value: Any = group if group in (None, "channel") else _group_size(group)
        if group_value == "channel" and hidden is None:
            raise InputError("group_size=channel needs hidden_size= or model=")
        pred = predict_point(
            SavedFit.load(args.fit),
            n_params,
            parse_count(overrides["tokens"], "tokens"),
            key,
            group_value,
            hidden,
            law=args.law,
        )
        if args.seal is not None:
            from qat_sweep.analysis.seal import seal

            sealed = seal(args.seal, [pred], args.fit)
    except InputError as err:
        print(f"qat-sweep predict: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(pred, indent=1) if args.json else format_prediction(pred))
    if args.seal is not None:
        print(f"sealed: {args.seal} (sha256 {sealed['sha256'][:16]}...)", file=sys.stderr)
    return 0
