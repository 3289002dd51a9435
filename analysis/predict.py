"""Predictions with intervals from a saved fit (fit.json + bootstrap.npz).

Confidence intervals come from the bootstrap parameter draws; prediction intervals add the
fit's own log-residual scatter, i.e. where a single new run would land.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.law.bootstrap import percentile_95
from qat_sweep.analysis.law.formulas import (
    BASE_PARAMS,
    LAWS,
    FittedLaw,
    Points,
    bf16_loss,
    effective_multiplier,
    fitted_law,
    group_value,
)

from qat_sweep.common import format_number
from qat_sweep.model.precision import BLOCK_FORMATS, base_format

BOOT_FILE = "bootstrap.npz"
LAW_SEP = "__law__"  # bootstrap.npz: <setting key>__law__<name> holds each fitted law's draws


def fit_reader_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every reader of a saved fit shares (predict, decide, suggest)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--fit", type=Path, required=True, help="a `qat-sweep fit` output directory")
    p.add_argument(
        "--law",
        choices=list(LAWS),
        help="use this delta law of the fit (default: the one the fit selected per setting)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def bootstrap_key(fit_key: str) -> str:
    return "delta__" + fit_key.replace("/", "__")


@dataclass
class DeltaLawDraws:
    """One setting's delta law from a saved fit: the point law, its bootstrap draws (rows, in
    the order of its parameters) and residuals, and the fit.json entry its caveats come from."""

    name: str
    source: str  # "selected" (by the fit's held-out comparison) or "--law"
    point: FittedLaw
    names: tuple[str, ...]
    draws: np.ndarray | None
    resid: np.ndarray
    entry: dict[str, Any]
    base_draws: dict[str, np.ndarray] | None = None

    def at_draws(self, rows: np.ndarray | None = None) -> FittedLaw:
        """The law with each draw as a column vector (a dropped exponent's column is 0)."""
        draws = self.draws if rows is None else rows
        params = {n: draws[:, j : j + 1] for j, n in enumerate(self.names)}
        base = self.point.base
        if self.point.law.uses_base and self.base_draws is not None:
            base = {k: v[: len(draws)] for k, v in self.base_draws.items()}
        return FittedLaw(self.point.law, params, base)

    @property
    def label(self) -> str:
        how = "forced with --law" if self.source == "--law" else "selected by the fit"
        return f"{self.name} ({how})"


def delta_law(saved: SavedFit, fit_key: str, law: str | None = None) -> DeltaLawDraws:
    """The delta law predict, decide and suggest use for a setting: the fit's selection, or
    `law` (InputError when the fit could not fit that law for this setting)."""
    fit = saved.result["delta"].get(fit_key)
    if fit is None:
        raise InputError(
            f"no delta fit for {fit_key}; fitted: {', '.join(saved.result['delta']) or 'none'}"
        )
    selected = fit.get("law") or "paper"
    name = law or selected
    base_params = saved.result["base"]["params"]
    base = None
    if base_params.get("A") is not None:
        base = {"A": base_params["A"], "alpha": base_params["alpha"]}
    try:
        point = fitted_law(fit, base, name)
    except KeyError as err:
        raise InputError(f"{fit_key}: {err.args[0]}") from err
    key = bootstrap_key(fit_key) + ("" if name == selected else LAW_SEP + name)
    entry = fit if name == selected else fit["laws"][name]
    draws = saved.draws.get(key)
    base_draws = None
    if "base" in saved.draws:
        b = saved.draws["base"]
        base_draws = {"A": b[:, 0:1], "alpha": b[:, 1:2]}
    return DeltaLawDraws(
        name, "--law" if law and law != selected else "selected", point,
        tuple(entry["params"]), draws, saved.draws.get("resid__" + key, np.zeros(1)),
        entry, base_draws,
    )  # fmt: skip


@dataclass
class SavedFit:
    """A fit directory loaded back: the JSON result and the bootstrap draws."""

    result: dict[str, Any]
    draws: dict[str, np.ndarray]

    @classmethod
    def load(cls, directory: Path) -> SavedFit:
        path = directory / "fit.json"
        if not path.is_file():
            raise InputError(f"no fit.json in {directory}; run `qat-sweep fit` first")
        boot = directory / BOOT_FILE
        try:
            result = json.loads(path.read_text())
            draws = dict(np.load(boot)) if boot.is_file() else {}
        except (OSError, ValueError, EOFError) as err:  # truncated or foreign files
            raise InputError(f"cannot read the fit in {directory}: {err}") from err
        if not isinstance(result, dict) or not {"base", "delta"} <= set(result):
            raise InputError(f"{path} is not a qat-sweep fit.json (no base/delta)")
        return cls(result, draws)


def _interval(samples: np.ndarray, point: float) -> list[float] | None:
    """95% percentile interval of the finite samples, widened to contain the point."""
    ends = percentile_95(samples)
    return [float(min(ends[0], point)), float(max(ends[1], point))] if ends else None


def _quantity(
    point: float, boot: np.ndarray, noisy: np.ndarray | None, caveats: list[str]
) -> dict[str, Any]:
    """value, ci95 and pi95 with point in CI in PI (a PI adds scatter to the CI, so it is at
    least as wide; Monte Carlo error alone could make it narrower), plus any caveats."""
    item: dict[str, Any] = {"value": float(point), "ci95": _interval(boot, point)}
    if noisy is not None:
        pi = _interval(noisy, point)
        ci = item["ci95"]
        item["pi95"] = [min(pi[0], ci[0]), max(pi[1], ci[1])] if pi and ci else pi
    caveats = list(caveats)
    for name in ("ci95", "pi95"):
        lo_hi = item.get(name)
        if lo_hi and (lo_hi[0] <= 0 or lo_hi[1] / lo_hi[0] > WIDE_RATIO):
            caveats.append(f"{name} spans more than two orders of magnitude: not identifiable")
            break
    if item["ci95"] is None:
        caveats.append("no bootstrap interval (none drawn, or the fit cannot give one)")
    if caveats:
        item["caveats"] = caveats
    return item


def _fit_caveats(label: str, fit: dict[str, Any]) -> list[str]:
    """Interval caveats a fit carries (exact fit, too few cells, intervals spanning decades)."""
    flags = fit.get("interval_flags") or {}
    by_reason: dict[str, list[str]] = {}
    for name, why in flags.items():
        by_reason.setdefault(why, []).append(name)
    out = [f"{label} {', '.join(names)}: {why}" for why, names in by_reason.items()]
    if (fit.get("identifiability") or {}).get("exact_fit"):
        out.append(f"{label} is an exact fit: its intervals carry no information")
    return out


EXTRAPOLATION_WARN = 10.0  # beyond 10x the fitted N or D, say so next to the number
WIDE_RATIO = 100.0  # a predicted interval whose ends differ by 100x is flagged


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise InputError(f"{name}={value!r}: must be a finite number > 0")
    return number


def _extrapolations(base: dict[str, Any], n_params: float, tokens: float) -> list[str]:
    """Warnings for N or D far beyond the largest the BF16 law was fitted on."""
    warnings = []
    for column, value in (("n_params", n_params), ("tokens", tokens)):
        largest = base.get("range", {}).get(column, [None, None])[1]
        if largest and value > EXTRAPOLATION_WARN * largest:
            warnings.append(
                f"{column}={value:.3g} is {format_number(value / largest, digits=3)}x the largest fitted "
                f"({largest:.3g}): an extrapolation"
            )
    return warnings


def _left_out(fit: dict[str, Any], fit_key: str, g: float) -> list[str]:
    """Warnings for the exponents a delta fit left out; none for a block format's gamma_G at
    its own block, where k holds the G term."""
    fixed = (fit.get("identifiability") or {}).get("exponents", {})
    warnings = []
    for name in fit.get("not_identifiable", []):
        if name == "gamma_G" and fixed.get(name, {}).get("fixed_by_format"):
            block = BLOCK_FORMATS[base_format(fit_key.partition("/")[2])].block
            if g != block:
                warnings.append(
                    f"gamma_G: {fit_key} exists at its block G = {block} only; at G = {g:g} "
                    "its delta is taken as at the block"
                )
            continue
        warnings.append(f"{name} not identifiable from the fitted grid: treated as 0")
    return warnings


def predict_point(
    saved: SavedFit,
    n_params: float,
    tokens: float,
    fit_key: str | None,
    group_size: Any = None,
    hidden_size: float | None = None,
    seed: int = 0,
    law: str | None = None,
) -> dict[str, Any]:
    """BF16 loss, delta and QAT loss with 95% confidence and prediction intervals, delta from
    the setting's selected law (or `law`).

    Every interval contains its point and every PI its CI; quantities whose fit cannot give
    trustworthy intervals (not identifiable, exact fit) carry `caveats`, also in `warnings`.
    """
    n_params, tokens = _positive("n_params", n_params), _positive("tokens", tokens)
    if hidden_size is not None:
        hidden_size = _positive("hidden_size", hidden_size)
    rng = np.random.default_rng(seed)
    base = saved.result["base"]
    out: dict[str, Any] = {
        "n_params": n_params,
        "tokens": tokens,
        "setting": fit_key,
        "group_size": None if group_size is None else str(group_size),
        "hidden_size": hidden_size,
        "warnings": [],
    }
    if base["params"].get("A") is None:
        raise InputError(
            "the BF16 law is not identifiable in this fit: " + "; ".join(base.get("notes", []))
        )
    bp = base["params"]
    point_base = float(bf16_loss(bp, n_params, tokens))
    draws_b = saved.draws.get("base", np.full((1, len(BASE_PARAMS)), np.nan))  # none: NaN
    boot_base = bf16_loss(dict(zip(BASE_PARAMS, draws_b.T, strict=True)), n_params, tokens)
    noise_b = rng.choice(saved.draws.get("resid__base", np.zeros(1)), size=boot_base.shape)
    base_caveats = _fit_caveats("BF16 law", base)
    out["bf16_loss"] = _quantity(point_base, boot_base, boot_base * np.exp(noise_b), base_caveats)
    out["warnings"] += _extrapolations(base, n_params, tokens)
    if fit_key is None or fit_key.startswith("bf16/"):
        out["warnings"] += out["bf16_loss"].get("caveats", [])
        return out
    chosen = delta_law(saved, fit_key, law)
    fit = chosen.entry
    out["law"] = chosen.name
    out["law_source"] = chosen.source
    if str(group_size) == "channel" and saved.result["settings"].get("channel_g") == "reduction":
        raise InputError(
            "this fit took G per channel as the layers' reduction dimensions (fit --channel-g "
            "reduction), not the hidden size: give that G as group_size=<G> (runs.csv's G "
            "column has it for each fitted preset)"
        )
    g = group_value(group_size, hidden_size)
    if not np.isfinite(g) or g < 2:
        raise InputError("group_size must be an integer >= 2, or channel with hidden_size")
    points = Points.at(n_params, tokens, g, group_size)
    out["warnings"] += _left_out(fit, fit_key, g)
    point_delta = float(chosen.point.delta(points)[0])
    if not np.isfinite(point_delta):
        raise InputError(
            f"law {chosen.name} of {fit_key} has no value at group_size={group_size} (it keeps "
            f"one parameter per fitted group size: {', '.join(fit['params'])})"
        )
    draws_d = chosen.draws
    boot_delta = (
        chosen.at_draws().delta(points)[:, 0] if draws_d is not None else np.array([np.nan])
    )
    noise_d = rng.choice(chosen.resid, size=boot_delta.shape)
    size = min(len(boot_base), len(boot_delta))
    boot_qat = boot_base[:size] + boot_delta[:size]
    noisy_qat = boot_base[:size] * np.exp(noise_b[:size]) + boot_delta[:size] * np.exp(
        noise_d[:size]
    )
    delta_caveats = _fit_caveats(f"delta law {fit_key} ({chosen.name})", fit)
    out["delta"] = _quantity(point_delta, boot_delta, boot_delta * np.exp(noise_d), delta_caveats)
    out["qat_loss"] = _quantity(
        point_base + point_delta, boot_qat, noisy_qat, base_caveats + delta_caveats
    )
    eff = float(effective_multiplier(bp, n_params, point_delta))
    boot_b = dict(zip(BASE_PARAMS, draws_b[:size].T, strict=True))
    boot_eff = effective_multiplier(boot_b, n_params, boot_delta[:size])
    out["eff_multiplier"] = _quantity(eff, boot_eff, None, base_caveats + delta_caveats)
    for key in ("bf16_loss", "delta", "qat_loss", "eff_multiplier"):
        out["warnings"] += [c for c in out[key].get("caveats", []) if c not in out["warnings"]]
    return out


def format_prediction(pred: dict[str, Any]) -> str:
    """Human-readable lines for the predict command."""

    def line(label: str, item: dict[str, Any]) -> str:
        text = f"{label:<16}{format_number(item['value'], 4)}"
        for name, key in (("CI", "ci95"), ("PI", "pi95")):
            if item.get(key):
                lo, hi = (format_number(v, 4) for v in item[key])
                text += f"   95% {name} [{lo}, {hi}]"
        return text

    lines = [
        f"N = {pred['n_params']:.4g}, D = {pred['tokens']:.4g}, setting = {pred['setting'] or 'bf16'}"
    ]
    if pred.get("law"):
        how = "forced with --law" if pred.get("law_source") == "--law" else "selected by the fit"
        lines.append(f"delta law: {pred['law']} ({how})")
    lines.append(line("BF16 loss", pred["bf16_loss"]))
    for label, key in (
        ("delta", "delta"),
        ("QAT loss", "qat_loss"),
        ("eff. multiplier", "eff_multiplier"),
    ):
        if key in pred:
            lines.append(line(label, pred[key]))
    lines += [f"warning: {w}" for w in pred["warnings"]]  # caveats of every interval included
    return "\n".join(lines)
