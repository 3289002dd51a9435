"""`qat-sweep bench key=value ...`: the trainer's step time and memory per scheme against BF16,
side by side in one process."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from qat_sweep.common import (
    SWITCHES,
    InputError,
    parse_int,
    parse_keys,
    resolve_device,
    wants_help,
    write_json_atomic,
)
from qat_sweep.model.precision import ACT_QUANTIZERS, ROTATIONS, SCHEMES, WEIGHT_FORMATS
from qat_sweep.model.presets import PAPER_PRESETS, PAPER_VOCAB, load_preset
from qat_sweep.model.transformer import compile_enabled
from qat_sweep.train.bench import BenchSettings, run

SMALL_VOCAB = 4096  # the demo's local BPE size


def _schemes(value: str) -> tuple[str, ...]:
    schemes = tuple(s for s in value.split(",") if s)
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown schemes {unknown}; allowed: {', '.join(SCHEMES)}")
    return schemes if "bf16" in schemes else ("bf16", *schemes)


def _choices(allowed: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(v for v in value.split(",") if v))
        unknown = [v for v in chosen if v not in allowed]
        if unknown or not chosen:
            raise ValueError(f"{what} {unknown or 'empty'}; allowed: {', '.join(allowed)}")
        return chosen

    return parse


def _group_sizes(value: str) -> tuple[int | str, ...]:
    groups = tuple(g if g == "channel" else parse_int(g) for g in value.split(",") if g)
    if not groups:
        raise ValueError("empty; give an integer, channel or a list")
    return groups


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"allowed: {', '.join(allowed)}")
        return value

    return parse


def _json_target(value: str) -> str:
    """Where the result goes: checked before the benchmark runs, not after."""
    folder = Path(value).expanduser().absolute().parent
    if value not in ("", "-") and not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise ValueError(
            f"{folder} is not a directory this user can write to; give json=- or a path"
        )
    return value


COMPILE_CHOICES = (*SWITCHES, "both")  # both: compiled and eager side by side


def _compile(value: str) -> str:
    if value not in COMPILE_CHOICES:
        raise ValueError(f"allowed: {', '.join(COMPILE_CHOICES)}")
    return value


def _compile_settings(value: str, device: torch.device) -> tuple[bool, ...]:
    """One setting, or compiled and eager side by side for ``both``."""
    return (True, False) if value == "both" else (compile_enabled(value, device.type),)


KEYS: dict[str, Callable[[str], Any]] = {
    "model": load_preset,
    "batch": parse_int,  # sequences per step on this device
    "micro_batch": parse_int,  # default: the whole batch in one micro-batch
    "seq_len": parse_int,  # default: the preset's
    "steps": parse_int,
    "warmup": partial(parse_int, minimum=0),
    "schemes": _schemes,  # BF16 is always measured: it is the reference
    "format": _choices(WEIGHT_FORMATS, "unknown formats"),  # or a list (int4,mxfp4,nvfp4)
    "group_size": _group_sizes,  # or a list (128,channel): each per-group format once per G
    "rotation": _choices(ROTATIONS, "unknown rotations"),  # or none,hadamard: both
    "act_quantizer": _one_of(ACT_QUANTIZERS),
    "vocab_size": parse_int,  # default: the preset's, else OLMo-2's for paper presets, else 4096
    "compile": _compile,  # as train.compile (auto = on CUDA, off on CPU), or both
    "device": str,  # auto, cpu or cuda, as train.device
    "seed": partial(parse_int, minimum=0),
    "json": _json_target,  # a path, or '-' for stdout
}


DEFAULTS = {"model": "1M", "batch": "8", "steps": "10", "warmup": "3", "format": "int4"}
DEFAULTS |= {"schemes": "bf16,w4a4,w4a16,w16a4,w4a4_fc2a8", "group_size": "32", "seed": "0"}
DEFAULTS |= {"act_quantizer": "auto", "compile": "auto", "device": "auto", "json": ""}
DEFAULTS |= {"rotation": "none"}


def parse_args(argv: list[str]) -> BenchSettings:
    """key=value arguments (`KEYS`); InputError naming any unknown key or malformed value."""
    given = parse_keys(argv, KEYS)
    opts = {key: KEYS[key](value) for key, value in DEFAULTS.items() if key not in given} | given
    model = opts["model"]
    device = torch.device(resolve_device(opts["device"]))
    vocab = opts.get("vocab_size") or (
        model.vocab_size or (PAPER_VOCAB if model.name in PAPER_PRESETS else SMALL_VOCAB)
    )
    batch = opts["batch"]
    micro = opts.get("micro_batch", batch)
    if batch % micro:
        raise InputError(f"batch={batch} is not a multiple of micro_batch={micro}")
    return BenchSettings(
        model=model,
        batch=batch,
        micro_batch=micro,
        seq_len=opts.get("seq_len", model.seq_len),
        steps=opts["steps"],
        warmup=opts["warmup"],
        schemes=opts["schemes"],
        formats=opts["format"],
        group_sizes=opts["group_size"],
        act_quantizer=opts["act_quantizer"],
        rotations=opts["rotation"],
        vocab_size=vocab,
        compile=_compile_settings(opts["compile"], device),
        device=device,
        seed=opts["seed"],
        json=opts["json"],
    )


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the result, one row per variant."""
    micro = f" (micro {result['micro_batch']})" if result["micro_batch"] != result["batch"] else ""
    header = (
        f"bench {result['model']} (N={result['n_params']:,}, vocab {result['vocab_size']}) "
        f"batch={result['batch']}{micro} seq_len={result['seq_len']} {result['format']} "
        f"on {result['device']}, median of {result['steps']} steps"
    )
    columns = ("scheme", "format", "G", "act", "compiled", "ms/step", "vs bf16", "tokens/s")
    columns += ("MFU", "peak GB")
    widths = (12, 12, 8, 7, 9, 10, 9, 12, 8, 9)
    lines = [header, "".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    for row in result["results"]:
        memory = row["peak_memory_gb"]
        rotated = "-had" if row["rotation"] == "hadamard" else ""
        cells = (
            row["scheme"],
            "-" if row["scheme"] == "bf16" else row["format"] + rotated,
            "-" if row["group_size"] is None else str(row["group_size"]),
            row["act_quantizer"] or "-",
            "yes" if row["compile"] else "no",
            f"{1000 * row['median_s']:.1f}",
            f"{row['rel_to_bf16']:.2f}x",
            f"{row['tokens_per_s']:,.0f}",
            f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-",
            f"{memory:.1f}" if memory is not None else "-",
        )
        lines.append("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


HELP = """usage: qat-sweep bench [key=value ...]

The trainer's step time, tokens/s, MFU and peak memory per scheme against BF16, side by side in
one process (compiled and eager with compile=both). Keys (defaults in brackets):

  model=PRESET [1M]  batch=SEQS [8]  micro_batch=SEQS  seq_len=N  steps=N [10]  warmup=N [3]
  schemes=LIST [bf16,w4a4,w4a16,w16a4,w4a4_fc2a8]  format=LIST [int4]  group_size=LIST [32]
  rotation=LIST [none]  act_quantizer=WORD [auto]  vocab_size=N  compile=auto|true|false|both
  device=auto|cpu|cuda  seed=N [0]  json=PATH (or json=- for JSON on stdout)
"""


def main(argv: list[str]) -> int:
    """``qat-sweep bench key=value ...``; returns the process exit code."""
    if wants_help(argv):
        print(HELP)
        return 0
    try:
        settings = parse_args(argv)
        result = run(settings)
    except ValueError as err:
        print(f"qat-sweep bench: {err}", file=sys.stderr)
        return 2
    if settings.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    if settings.json:
        write_json_atomic(settings.json, result)
    return 0
