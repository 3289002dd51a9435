"""The arguments every sweep command shares: `sweep=NAME`, cost options (`mfu=`, `peak_tflops=`,
`launcher=`), `--flags`, and the train overrides applied to every run."""

from __future__ import annotations

import math

from qat_sweep.common import InputError, split_overrides
from qat_sweep.estimates.flops import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS
from qat_sweep.sweep.plan import available_sweeps
from qat_sweep.sweep.spec import (
    PlanError,
)


def parse_cli(
    argv: list[str], flags: tuple[str, ...]
) -> tuple[str, dict[str, str], set[str], list[str]]:
    """Split ``sweep=NAME [--flag] [option=value] [overrides...]`` into its parts.

    ``CLI_OPTIONS`` (``mfu=``, ``peak_tflops=``, ``launcher=``) and the given ``--flags`` are
    taken out; every other ``key=value`` is a train override applied to every run of the sweep.
    """
    pairs, words = split_overrides(argv)
    sweep = pairs.pop("sweep", None)
    options = {key: pairs.pop(key) for key in CLI_OPTIONS if key in pairs}
    seen: set[str] = set()
    for word in (w for w in words if w.startswith("-")):
        name, sep, value = word.partition("=")
        if name not in flags:
            raise PlanError(f"unknown option {word!r}; options: {', '.join(flags)}")
        seen.add(name)
        if sep:
            options[name] = value
    # Hydra's own words without '=' (`~key` deletes a key) stay train overrides too.
    overrides = [f"{k}={v}" for k, v in pairs.items()] + [w for w in words if w[:1] != "-"]
    if not sweep:
        raise PlanError(f"missing sweep=NAME; available sweeps: {', '.join(available_sweeps())}")
    return sweep, options, seen, overrides


CLI_OPTIONS = ("mfu", "peak_tflops", "launcher")


def cost_options(options: dict[str, str]) -> tuple[float, float]:
    try:
        mfu = float(options.get("mfu", DEFAULT_MFU))
        peak = float(options.get("peak_tflops", DEFAULT_PEAK_TFLOPS))
    except ValueError as e:
        raise PlanError(f"mfu and peak_tflops must be numbers: {e}") from e
    if not 0 < mfu <= 1 or not 0 < peak < math.inf:
        raise PlanError(
            f"need 0 < mfu <= 1 and a finite peak_tflops > 0, got mfu={mfu} peak={peak}"
        )
    return mfu, peak


COST_OPTIONS = ("mfu", "peak_tflops")


def split_cli(extra: list[str], command: str) -> tuple[str, float, float, list[str]]:
    """sweep=NAME, mfu=, peak_tflops= and train overrides out of the leftover arguments."""
    pairs, rest = split_overrides(extra)
    if rest:
        raise InputError(f"unexpected argument {rest[0]!r} (see qat-sweep {command} --help)")
    sweep = pairs.pop("sweep", None)
    options = {k: pairs.pop(k) for k in COST_OPTIONS if k in pairs}
    overrides = [f"{k}={v}" for k, v in pairs.items()]
    if not sweep:
        raise InputError(f"missing sweep=NAME; available sweeps: {', '.join(available_sweeps())}")
    try:
        mfu, peak = cost_options(options)  # plan's own check of the same options
    except PlanError as err:
        raise InputError(str(err)) from err
    return sweep, mfu, peak, overrides
