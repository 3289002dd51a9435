"""The law fit's shared parts and the BF16 base law, fitted with lmfit.

Huber loss on log residuals, summed (Chinchilla-replication practice). The base fit
starts from a grid over exponents with a non-negative linear solve for A, B, E, so the global
optimum is found without luck. The delta law is in delta_fit.py, the joint fit in joint_fit.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lmfit
import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_values, count_cells
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.law.formulas import BASE_PARAMS, log_bf16_loss
from scipy.optimize import nnls
from scipy.special import huber

from qat_sweep.common import progress

N_UNIT, D_UNIT = 1e6, 1e9  # normalised units inside the base fit, reported back in raw units
EXPONENT_GRID = np.linspace(0.05, 1.2, 47)
BASE_BOUNDS = {"A": (0.0, 1e6), "B": (0.0, 1e6), "E": (0.0, 10.0), "alpha": (0.01, 2.0)}
BASE_BOUNDS["beta"] = BASE_BOUNDS["alpha"]
SAME_COST = 1e-6  # relative tolerance for "this start reached the best cost"
# On a bound: within 1e-6 of the bound's own magnitude (or of the value's), and a bound at 0 is
# hit below 1e-9, which is 0 at the scale of every parameter here (A, B in normalised units).
BOUND_RTOL, BOUND_ATOL = 1e-6, 1e-9


@dataclass
class LawFit:
    """One fitted law: raw-unit parameters, diagnostics, residuals and (later) bootstrap draws."""

    name: str
    params: dict[str, float | None]
    n_runs: int
    n_cells: int
    cost: float
    converged: bool
    f_scale: float
    n_starts: int
    frac_best: float
    bound_hits: list[str] = field(default_factory=list)
    not_identifiable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ci95: dict[str, list[float] | None] = field(default_factory=dict)
    boot: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)
    internal: dict[str, Any] = field(default_factory=dict)
    identifiability: dict[str, Any] = field(default_factory=dict)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    # parameter -> why its interval is missing or not to be trusted (exact fit, spans decades...)
    interval_flags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "ci95": self.ci95,
            "n_runs": self.n_runs,
            "n_cells": self.n_cells,
            **self.stats,
            "cost": self.cost,
            "converged": self.converged,
            "bound_hits": self.bound_hits,
            "starts": {"n": self.n_starts, "frac_reached_best": self.frac_best},
            "huber_f_scale": self.f_scale,
            "not_identifiable": self.not_identifiable,
            "identifiability": self.identifiability,
            "interval_flags": self.interval_flags,
            "outliers": self.outliers,
            "notes": self.notes,
            "resid_log_sd": float(np.std(self.resid)) if self.resid.size else None,
        }


def huber_cost(resid: np.ndarray, f_scale: float, weights: np.ndarray | None = None) -> float:
    """Summed Huber loss (never averaged: averaging stops optimisers early)."""
    values = huber(f_scale, resid)
    return float(np.sum(values if weights is None else weights * values))


def robust_scale(resid: np.ndarray, floor: float) -> float:
    """Huber threshold 1.345 * sigma with sigma from the MAD: the usual 95%-efficiency tuning."""
    mad = np.median(np.abs(resid - np.median(resid))) * 1.4826
    return float(max(1.345 * mad, floor))


def on_bound(value: float, bound: float) -> bool:
    """Is `value` at `bound`, measured on the scale of the value and the bound themselves."""
    if not np.isfinite(bound):
        return False
    return abs(value - bound) <= BOUND_RTOL * max(abs(bound), abs(value)) + BOUND_ATOL


def bound_hits(params: lmfit.Parameters, names: tuple[str, ...]) -> list[str]:
    return [
        name
        for name in names
        if params[name].vary
        and (
            on_bound(params[name].value, params[name].min)
            or on_bound(params[name].value, params[name].max)
        )
    ]


# ---------------------------------------------------------------- BF16 base law


def base_raw(theta: np.ndarray, tied: bool) -> np.ndarray:
    """Normalised [A, B, E, alpha(, beta)] -> raw-unit columns in BASE_PARAMS order."""
    theta = np.atleast_2d(theta)
    alpha = theta[:, 3]
    beta = alpha if tied else theta[:, 4]
    a_raw = theta[:, 0] * N_UNIT**alpha
    b_raw = theta[:, 1] * D_UNIT**beta
    return np.column_stack([a_raw, alpha, b_raw, beta, theta[:, 2]])


def _grid_starts(x_n, x_d, loss, tied, f_scale, top):
    """Grid over exponents, NNLS for (A, B, E); return the best `top` starts by Huber cost."""
    pairs = (
        [(a, a) for a in EXPONENT_GRID]
        if tied
        else [(a, b) for a in EXPONENT_GRID for b in EXPONENT_GRID]
    )
    scored = []
    for alpha, beta in pairs:
        design = np.column_stack([x_n**-alpha, x_d**-beta, np.ones_like(x_n)])
        coef, _ = nnls(design, loss)
        pred = design @ coef
        if np.all(pred > 0):
            cost = huber_cost(np.log(pred) - np.log(loss), f_scale)
            scored.append((cost, [*coef, alpha] + ([] if tied else [beta])))
    scored.sort(key=lambda item: item[0])
    return [np.array(theta) for _, theta in scored[:top]]


def fit_base(
    bf16: pd.DataFrame, tied: bool = True, f_scale: float = 1e-3, starts: int = 8
) -> LawFit:
    """BF16 law L = A/N^alpha + B/D^beta + E (alpha = beta unless tied is False)."""
    n_cells = count_cells(bf16)
    names = BASE_PARAMS
    fit = LawFit("base", dict.fromkeys(names), len(bf16), n_cells, np.nan, False, f_scale, 0, 0.0)
    n_cell, d_cell = cell_values(bf16)
    n_free = 4 if tied else 5
    need_n = 2 if tied else 3
    short = []
    if len(set(n_cell)) < need_n:
        short.append(f"{len(set(n_cell))} distinct N (need {need_n})")
    if len(set(d_cell)) < 2:
        short.append(f"{len(set(d_cell))} distinct D (need 2)")
    if n_cells < n_free:
        short.append(f"{n_cells} (N, D) cells for {n_free} parameters")
    if short:
        fit.not_identifiable = list(names)
        fit.notes.append("BF16 law not identifiable: " + ", ".join(short))
        return fit
    fit.identifiability = base_identifiability(n_cell, d_cell, n_cells, n_free, fit)
    x_n, x_d = bf16["n_params"].to_numpy() / N_UNIT, bf16["tokens"].to_numpy() / D_UNIT
    loss = bf16["loss"].to_numpy()
    results = []
    grid = _grid_starts(x_n, x_d, loss, tied, f_scale, starts)
    for theta0 in progress(grid, "BF16 law fit", unit="start"):
        params = lmfit.Parameters()
        for i, name in enumerate(("A", "B", "E", "alpha")):
            lo, hi = BASE_BOUNDS[name]
            params.add(name, value=float(np.clip(theta0[i], lo, hi)), min=lo, max=hi)
        if tied:
            params.add("beta", expr="alpha")
        else:
            params.add(
                "beta",
                value=float(theta0[4]),
                min=BASE_BOUNDS["beta"][0],
                max=BASE_BOUNDS["beta"][1],
            )

        def resid(p, x_n=x_n, x_d=x_d, loss=loss):
            return log_bf16_loss(p.valuesdict(), x_n, x_d) - np.log(loss)

        out = lmfit.Minimizer(resid, params).minimize(
            method="least_squares", loss="huber", f_scale=f_scale
        )
        results.append((huber_cost(out.residual, f_scale), out))
    best_cost, best = min(results, key=lambda item: item[0])
    theta = np.array([best.params[n].value for n in ("A", "B", "E", "alpha", "beta")])
    theta = theta[:4] if tied else theta
    raw = base_raw(theta, tied)[0]
    fit.params = dict(zip(names, map(float, raw), strict=True))
    fit.cost, fit.converged = best_cost, bool(best.success)
    fit.n_starts = len(results)
    fit.frac_best = sum(c <= best_cost * (1 + SAME_COST) + 1e-15 for c, _ in results) / len(results)
    fit.bound_hits = bound_hits(best.params, ("A", "B", "E", "alpha", "beta"))
    fit.resid = best.residual.copy()
    pred = np.exp(best.residual) * loss
    fit.stats["r2"] = float(1 - np.sum((pred - loss) ** 2) / np.sum((loss - loss.mean()) ** 2))
    fit.internal = {"theta": theta, "tied": tied}
    fit.outliers = identify.outliers(fit.resid, identify.run_keys(bf16), "log_loss_residual")
    return fit


def base_identifiability(
    n_cell: np.ndarray, d_cell: np.ndarray, n_cells: int, n_free: int, fit: LawFit
) -> dict[str, Any]:
    """Can the cells separate the N term from the D term? Flags A/B (and exponents) if not."""
    cells = np.unique(np.column_stack([np.log(n_cell), np.log(d_cell)]), axis=0)
    v, _ = identify.independent_variation(cells, 1)
    separable = v >= identify.V_MIN
    exact = n_cells <= n_free
    report = {
        "design": ["log N", "log D"],
        "condition": identify.condition(cells),
        "n_cells": n_cells,
        "n_params": n_free,
        "N_vs_D": {"independent_variation": v, "separable": bool(separable)},
        "exact_fit": exact,
        "refit": None,
    }
    if exact:
        fit.interval_flags.update(
            dict.fromkeys(
                BASE_PARAMS, f"not identifiable: exact fit ({n_cells} cells, {n_free} parameters)"
            )
        )
        fit.notes.append(
            f"BF16 law is an exact fit ({n_cells} cells for {n_free} parameters): no intervals"
        )
    if not separable:
        ratio = np.exp(cells[:, 1] - cells[:, 0])
        why = (
            f"not identifiable: D/N hardly varies ({ratio.min():.3g} to {ratio.max():.3g}), so only "
            "A/N^alpha + B/D^beta along that line is determined"
        )
        split = ("A", "B") if n_free == 4 else ("A", "B", "alpha", "beta")
        fit.interval_flags.update(dict.fromkeys(split, why))
        fit.notes.append(
            f"A and B {why}; the split between them is one of many equivalent ones (not refitted: "
            "the BF16 law keeps both terms). Runs at other tokens per parameter for the same "
            "model size (e.g. D/N = 20 and 400) would separate them."
        )
    return report
