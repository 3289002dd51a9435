"""Predictions with intervals from a saved fit (fit.json + bootstrap.npz).

Confidence intervals come from the bootstrap parameter draws; prediction intervals add the
fit's own log-residual scatter, i.e. where a single new run would land.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.laws import BASE_PARAMS, DELTA_PARAMS, group_value

BOOT_FILE = "bootstrap.npz"
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str, name: str = "count") -> float:
    """'20e9', '20B', '100M', '1.5T', '20_000' -> a finite float > 0 (InputError naming `name`)."""
    match = re.fullmatch(r"\s*([0-9_.]+(?:[eE][+-]?\d+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
    try:
        value = float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2).upper()]
    except (AttributeError, ValueError):  # no match, or digits like '.' that are no number
        raise InputError(f"{name}={text}: not a count (use 20e9, 20B or 100M)") from None
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"{name}={text}: must be a finite number > 0")
    return value


def bootstrap_key(fit_key: str) -> str:
    return "delta__" + fit_key.replace("/", "__")


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
        result = json.loads(path.read_text())
        boot = directory / BOOT_FILE
        draws = dict(np.load(boot)) if boot.is_file() else {}
        return cls(result, draws)


def _interval(samples: np.ndarray) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    return (
        [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]
        if samples.size
        else None
    )


EXTRAPOLATION_WARN = 10.0  # beyond 10x the fitted N or D, say so next to the number


def predict_point(
    saved: SavedFit,
    n_params: float,
    tokens: float,
    fit_key: str | None,
    group_size: Any = None,
    hidden_size: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """BF16 loss, delta and QAT loss with 95% confidence and prediction intervals."""
    rng = np.random.default_rng(seed)
    base = saved.result["base"]
    out: dict[str, Any] = {
        "n_params": n_params,
        "tokens": tokens,
        "setting": fit_key,
        "warnings": [],
    }
    if base["params"].get("A") is None:
        raise InputError(
            "the BF16 law is not identifiable in this fit: " + "; ".join(base.get("notes", []))
        )
    bp = base["params"]
    point_base = bp["A"] / n_params ** bp["alpha"] + bp["B"] / tokens ** bp["beta"] + bp["E"]
    draws_b = saved.draws.get("base")
    if draws_b is not None:
        d = dict(zip(BASE_PARAMS, draws_b.T, strict=True))
        boot_base = d["A"] / n_params ** d["alpha"] + d["B"] / tokens ** d["beta"] + d["E"]
    else:
        boot_base = np.array([point_base])
    noise_b = rng.choice(saved.draws.get("resid__base", np.zeros(1)), size=boot_base.shape)
    out["bf16_loss"] = {
        "value": float(point_base),
        "ci95": _interval(boot_base),
        "pi95": _interval(boot_base * np.exp(noise_b)),
    }
    for column, value in (("n_params", n_params), ("tokens", tokens)):
        largest = base.get("range", {}).get(column, [None, None])[1]
        if largest and value > EXTRAPOLATION_WARN * largest:
            out["warnings"].append(
                f"{column}={value:.3g} is {value / largest:,.0f}x the largest fitted "
                f"({largest:.3g}): an extrapolation"
            )
    if fit_key is None or fit_key.startswith("bf16/"):
        return out
    fit = saved.result["delta"].get(fit_key)
    if fit is None:
        raise InputError(
            f"no delta fit for {fit_key}; fitted: {', '.join(saved.result['delta']) or 'none'}"
        )
    g = group_value(group_size, hidden_size)
    if not np.isfinite(g) or g <= 1:
        raise InputError("group_size must be an integer > 1, or channel with hidden_size")
    dp = fit["params"]
    for name in fit.get("not_identifiable", []):
        out["warnings"].append(f"{name} not identifiable from the fitted grid: treated as 0")
    point_delta = float(
        _delta(np.array([[dp[p] or 0.0 for p in DELTA_PARAMS]]), n_params, tokens, g)[0]
    )
    draws_d = saved.draws.get(bootstrap_key(fit_key))
    boot_delta = (
        _delta(draws_d, n_params, tokens, g) if draws_d is not None else np.array([point_delta])
    )
    noise_d = rng.choice(
        saved.draws.get("resid__" + bootstrap_key(fit_key), np.zeros(1)), size=boot_delta.shape
    )
    size = min(len(boot_base), len(boot_delta))
    boot_qat = boot_base[:size] + boot_delta[:size]
    noisy_qat = boot_base[:size] * np.exp(noise_b[:size]) + boot_delta[:size] * np.exp(
        noise_d[:size]
    )
    out["delta"] = {
        "value": point_delta,
        "ci95": _interval(boot_delta),
        "pi95": _interval(boot_delta * np.exp(noise_d)),
    }
    out["qat_loss"] = {
        "value": point_base + point_delta,
        "ci95": _interval(boot_qat),
        "pi95": _interval(noisy_qat),
    }
    eff = _eff(bp["A"], bp["alpha"], n_params, point_delta)
    if draws_b is not None:
        boot_eff = _eff(draws_b[:size, 0], draws_b[:size, 1], n_params, boot_delta[:size])
    else:
        boot_eff = np.array([eff])
    out["eff_multiplier"] = {"value": float(eff), "ci95": _interval(boot_eff)}
    return out


def _delta(draws: np.ndarray, n: float, d: float, g: float) -> np.ndarray:
    k, g_n, g_d, g_g = (np.nan_to_num(c) for c in draws.T)
    return k * d**g_d * np.log2(g) ** g_g / n**g_n


def _eff(a, alpha, n, delta):
    with np.errstate(divide="ignore", invalid="ignore"):  # A = 0 resamples: no multiplier (NaN)
        return (a / (a + delta * n**alpha)) ** (1.0 / alpha)


def format_prediction(pred: dict[str, Any]) -> str:
    """Human-readable lines for the predict command."""

    def line(label: str, item: dict[str, Any]) -> str:
        text = f"{label:<16}{item['value']:.4f}"
        if item.get("ci95"):
            text += f"   95% CI [{item['ci95'][0]:.4f}, {item['ci95'][1]:.4f}]"
        if item.get("pi95"):
            text += f"   95% PI [{item['pi95'][0]:.4f}, {item['pi95'][1]:.4f}]"
        return text

    lines = [
        f"N = {pred['n_params']:.4g}, D = {pred['tokens']:.4g}, setting = {pred['setting'] or 'bf16'}"
    ]
    lines.append(line("BF16 loss", pred["bf16_loss"]))
    for label, key in (
        ("delta", "delta"),
        ("QAT loss", "qat_loss"),
        ("eff. multiplier", "eff_multiplier"),
    ):
        if key in pred:
            lines.append(line(label, pred[key]))
    lines += [f"warning: {w}" for w in pred["warnings"]]
    return "\n".join(lines)
