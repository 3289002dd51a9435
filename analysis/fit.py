"""Point fits of the law with lmfit: BF16 base, per-setting delta, and the optional joint fit.

Huber loss on log residuals, summed (Chinchilla-replication practice, NOTES.md). The base fit
starts from a grid over exponents with a non-negative linear solve for A, B, E, so the global
optimum is found without luck; the delta law is linear in log space, so a robust linear fit
(IRLS) gives the start and lmfit only refines it within bounds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import lmfit
import numpy as np
import pandas as pd
from qat_sweep.analysis import identify
from qat_sweep.analysis.cells import cell_values, count_cells
from qat_sweep.analysis.laws import (
    BASE_PARAMS,
    DELTA_PARAMS,
    LOSS_FLOOR,
    bf16_loss,
    delta_regressors,
    log_bf16_loss,
)
from scipy.optimize import nnls
from scipy.special import huber

N_UNIT, D_UNIT = 1e6, 1e9  # normalised units inside the base fit, reported back in raw units
EXPONENT_GRID = np.linspace(0.05, 1.2, 47)
BASE_BOUNDS = {"A": (0.0, 1e6), "B": (0.0, 1e6), "E": (0.0, 10.0), "alpha": (0.01, 2.0)}
BASE_BOUNDS["beta"] = BASE_BOUNDS["alpha"]
GAMMA_BOUND = 3.0
DELTA_COLUMNS = ("gamma_D", "gamma_G", "gamma_N")
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


def _hits(params: lmfit.Parameters, names: tuple[str, ...]) -> list[str]:
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
    for theta0 in _grid_starts(x_n, x_d, loss, tied, f_scale, starts):
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
    fit.bound_hits = _hits(best.params, ("A", "B", "E", "alpha", "beta"))
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


# ---------------------------------------------------------------- delta law (log-linear)


@dataclass
class DeltaDesign:
    """Centred log-space design: log delta = c0 + sum_j gamma_j * (x_j - mean_j)."""

    columns: tuple[str, ...]
    dropped: dict[str, str]
    means: np.ndarray

    def matrix(self, n: np.ndarray, d: np.ndarray, g: np.ndarray) -> np.ndarray:
        raw = _raw_columns(n, d, g)
        cols = [raw[c] - m for c, m in zip(self.columns, self.means, strict=True)]
        return np.column_stack([np.ones(len(np.atleast_1d(n))), *cols])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box of [c0, gammas...] shared by the point fit and every bootstrap refit."""
        lower = np.array([-np.inf] + [-GAMMA_BOUND] * len(self.columns))
        return lower, -lower

    def to_raw(self, coef: np.ndarray) -> np.ndarray:
        """[c0, gammas...] (batched) -> raw columns in DELTA_PARAMS order, 0 for dropped ones."""
        coef = np.atleast_2d(coef)
        out = np.zeros((coef.shape[0], len(DELTA_PARAMS)))
        log_k = coef[:, 0] - coef[:, 1:] @ self.means if self.columns else coef[:, 0]
        out[:, 0] = np.exp(log_k)
        for j, name in enumerate(self.columns):
            out[:, DELTA_PARAMS.index(name)] = coef[:, 1 + j]
        return out


def _raw_columns(n, d, g) -> dict[str, np.ndarray]:
    return delta_regressors(*(np.atleast_1d(np.asarray(x, float)) for x in (n, d, g)))


def delta_design(rows: pd.DataFrame, terms: tuple[str, ...] = DELTA_COLUMNS) -> DeltaDesign:
    """Keep only exponents the grid can identify: a varying, non-collinear regressor each."""
    raw = _raw_columns(rows["n_params"], rows["tokens"], rows["G"])
    what = {"gamma_N": "N", "gamma_D": "D", "gamma_G": "G"}
    dropped = {c: f"single {what[c]} value in the data" for c in terms if np.ptp(raw[c]) < 1e-9}
    kept = [c for c in terms if c not in dropped]
    if len(kept) > 1:
        centred = np.column_stack([raw[c] - raw[c].mean() for c in kept])
        centred = centred / np.linalg.norm(centred, axis=0)
        for j, name in enumerate(kept):
            others = np.delete(centred, j, axis=1)
            fitted = others @ np.linalg.lstsq(others, centred[:, j], rcond=None)[0]
            if np.linalg.norm(centred[:, j] - fitted) < 1e-3:
                dropped[name] = "collinear with another regressor in this grid"
        kept = [c for c in kept if c not in dropped]
    means = np.array([raw[c].mean() for c in kept])
    return DeltaDesign(tuple(kept), dropped, means)


def _box_wls(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Batched argmin_c sum_n w_bn (x_n c - y_n)^2 subject to lower <= c <= upper.

    The box optimum is the feasible face optimum of lowest cost, so rows whose free solution is
    infeasible try every face (free, at lower, at upper per bounded coefficient): 27 faces for
    the three exponents of the delta law.
    """
    b, p = w.shape[0], x.shape[1]
    bounded = [j for j in range(p) if np.isfinite(lower[j]) or np.isfinite(upper[j])]
    best = np.full((b, p), np.nan)
    best_cost = np.full(b, np.inf)
    todo = np.ones(b, bool)
    faces = [()] + [f for f in itertools.product((0, -1, 1), repeat=len(bounded)) if any(f)]
    for face in faces:
        if not todo.any():
            break
        fixed = {
            j: (lower[j] if s < 0 else upper[j]) for j, s in zip(bounded, face, strict=False) if s
        }
        if not all(np.isfinite(v) for v in fixed.values()):
            continue
        free = [j for j in range(p) if j not in fixed]
        rows = np.flatnonzero(todo)
        c = np.zeros((len(rows), p))
        target = y.astype(float).copy()
        for j, v in fixed.items():
            c[:, j] = v
            target = target - x[:, j] * v
        if free:
            xf = x[:, free]
            wr = w[rows]
            hess = np.einsum("bn,ni,nj->bij", wr, xf, xf) + 1e-12 * np.eye(len(free))
            grad = np.einsum("bn,ni,n->bi", wr, xf, target)
            c[:, free] = (np.linalg.pinv(hess) @ grad[..., None])[..., 0]
        tol = 1e-12 * (1 + np.abs(c))
        feasible = np.all((c >= lower - tol) & (c <= upper + tol), axis=1)
        cost = np.einsum("bn,bn->b", w[rows], (c @ x.T - y) ** 2)
        take = feasible & (cost < best_cost[rows])
        best[rows[take]] = np.clip(c[take], lower, upper)
        best_cost[rows[take]] = cost[take]
        if not face:  # free optimum feasible: that row is done
            todo[rows[feasible]] = False
    return best


def huber_irls(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    f_scale: float,
    coef0: np.ndarray,
    iters: int = 100,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """Batched robust linear fit: one Huber regression per row of `weights` (bootstrap counts),
    within the box [lower, upper] (the point fit's bounds; default unbounded).

    Huber IRLS is a majorise-minimise scheme, so solving each reweighted step inside the box
    converges to the box-constrained Huber optimum. Resamples whose weighted design is singular
    come back as NaN.
    """
    p = x.shape[1]
    lower = np.full(p, -np.inf) if lower is None else np.asarray(lower, float)
    upper = np.full(p, np.inf) if upper is None else np.asarray(upper, float)
    coef = np.clip(np.tile(coef0, (weights.shape[0], 1)).astype(float), lower, upper)
    for _ in range(iters):
        resid = coef @ x.T - y
        w = weights * np.minimum(1.0, f_scale / np.maximum(np.abs(resid), 1e-300))
        new = _box_wls(x, y, w, lower, upper)
        done = np.nanmax(np.abs(new - coef)) < 1e-10
        coef = new
        if done:
            break
    gram = np.einsum("bn,ni,nj->bij", (weights > 0).astype(float), x, x)
    singular = np.linalg.cond(gram) > 1e10
    coef[singular] = np.nan
    return coef


MIN_CELLS = 4  # below this a cell bootstrap is degenerate; resample runs instead


def separate_exponents(
    rows: pd.DataFrame, y: np.ndarray, design: DeltaDesign, terms: tuple[str, ...]
) -> tuple[DeltaDesign, dict[str, Any]]:
    """Drop, one at a time, the exponents this grid cannot separate; report every decision."""
    raw = _raw_columns(rows["n_params"], rows["tokens"], rows["G"])
    decisions: dict[str, dict[str, Any]] = {}
    for name, why in design.dropped.items():
        decisions[name] = {
            "separable": False,
            "why": why,
            "action": "refit without it (fixed at 0)",
        }
    kept = list(design.columns)
    while kept:
        report = identify.exponent_report(raw, tuple(kept), y)
        worst = identify.worst_exponent(report)
        if worst is None:
            break
        entry = report[worst]
        partner = entry["moves_with"]
        decisions[worst] = {
            **entry,
            "separable": False,
            "why": identify.why_not(worst, entry),
            "action": "refit without it (fixed at 0)"
            + (f"; {partner} and k absorb its effect along this grid" if partner else ""),
        }
        kept.remove(worst)
        design.dropped[worst] = decisions[worst]["why"]
    final = identify.exponent_report(raw, tuple(kept), y)
    for name in kept:
        decisions[name] = {**final[name], "action": "fitted"}
    for name, entry in decisions.items():
        if not entry["separable"]:
            entry["runs_to_separate"] = identify.SEPARATE_BY.get(name, "")
    varying = [t for t in terms if np.ptp(raw[t]) > 1e-9]  # a constant column has no condition
    columns = np.column_stack([raw[t] for t in varying]) if varying else np.zeros((len(y), 0))
    new = DeltaDesign(tuple(kept), design.dropped, np.array([raw[c].mean() for c in kept]))
    n_params = 1 + len(kept)
    points = identify.design_points(rows)
    n_cells = count_cells(rows)
    intervals = "cells" if n_cells >= max(MIN_CELLS, n_params) else "runs"
    if points <= n_params or n_cells < n_params:
        intervals = "none"
    report = {
        "design": ["log N", "log D", "log log2 G"],
        "condition": identify.condition(np.unique(columns, axis=0)),
        "n_points": points,
        "n_cells": n_cells,
        "n_params": n_params,
        "exact_fit": points <= n_params,
        "intervals": intervals,
        "exponents": {t: decisions[t] for t in terms if t in decisions},
    }
    return new, report


def delta_start(
    rows: pd.DataFrame, y: np.ndarray, f_scale: float | None, terms: tuple[str, ...]
) -> tuple[DeltaDesign, dict[str, Any], np.ndarray, np.ndarray, float, np.ndarray]:
    """The delta fit up to lmfit: identifiable design, x, OLS, Huber threshold and the box IRLS
    optimum that lmfit refines. Shared with simulate.py's bulk refits, so both fit one estimator."""
    design, ident = separate_exponents(rows, y, delta_design(rows, terms), terms)
    x = design.matrix(rows["n_params"], rows["tokens"], rows["G"])
    lower, upper = design.bounds()
    ols = np.linalg.lstsq(x, y, rcond=None)[0]
    scale = f_scale if f_scale is not None else robust_scale(x @ ols - y, floor=0.01)
    init = huber_irls(x, y, np.ones((1, len(y))), scale, ols, lower=lower, upper=upper)[0]
    return design, ident, x, ols, scale, init


def fit_delta(
    rows: pd.DataFrame,
    name: str,
    f_scale: float | None = None,
    terms: tuple[str, ...] = DELTA_COLUMNS,
    seed: int = 0,
) -> LawFit:
    """delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N on paired gaps, Huber in log space.

    Exponents the grid cannot separate (identify.py) are reported and left out of the refit.
    """
    y = np.log(rows["delta"].to_numpy())
    design, ident, x, ols, scale, init = delta_start(rows, y, f_scale, terms)
    n_cells = ident["n_cells"]
    fit = LawFit(name, {}, len(rows), n_cells, np.nan, False, scale, 0, 0.0)
    fit.identifiability = ident
    fit.not_identifiable = sorted(design.dropped)
    exponents = ident["exponents"]
    fit.notes = [
        f"{c} not identifiable: {why}; {exponents.get(c, {}).get('action', 'refit without it')}. "
        f"{identify.separate_by(c)}."
        for c, why in sorted(design.dropped.items())
    ]
    n_params = x.shape[1]
    if ident["exact_fit"]:
        fit.notes.append(
            f"exact fit: {ident['n_points']} distinct (N, D, G) points for {n_params} parameters"
        )
        why = f"not identifiable: exact fit ({ident['n_points']} points, {n_params} parameters)"
        fit.interval_flags.update(dict.fromkeys(["k", *design.columns], why))
    elif n_cells < n_params:
        why = f"not identifiable: {n_cells} (N, D) cells for {n_params} parameters"
        fit.interval_flags.update(dict.fromkeys(["k", *design.columns], why))
        fit.notes.append(f"intervals {why}")
    rng = np.random.default_rng(seed)
    starts = [init, ols] + [init + rng.normal(0, 0.3, init.shape) for _ in range(3)]
    results = []
    for start in starts:
        params = lmfit.Parameters()
        params.add("c0", value=float(start[0]))
        for j, col in enumerate(design.columns):
            value = float(np.clip(start[1 + j], -GAMMA_BOUND, GAMMA_BOUND))
            params.add(col, value=value, min=-GAMMA_BOUND, max=GAMMA_BOUND)

        def resid(p, x=x, y=y, cols=design.columns):
            coef = np.array([p["c0"].value] + [p[c].value for c in cols])
            return x @ coef - y

        out = lmfit.Minimizer(resid, params).minimize(
            method="least_squares", loss="huber", f_scale=scale
        )
        results.append((huber_cost(out.residual, scale), out))
    best_cost, best = min(results, key=lambda item: item[0])
    coef = np.array([best.params["c0"].value] + [best.params[c].value for c in design.columns])
    raw = design.to_raw(coef)[0]
    fit.params = {
        p: (float(v) if p == "k" or p in design.columns else None)
        for p, v in zip(DELTA_PARAMS, raw, strict=True)
    }
    fit.cost, fit.converged = best_cost, bool(best.success)
    fit.n_starts = len(results)
    fit.frac_best = sum(c <= best_cost * (1 + SAME_COST) + 1e-12 for c, _ in results) / len(results)
    fit.bound_hits = _hits(best.params, design.columns)
    fit.resid = best.residual.copy()
    pred = np.exp(x @ coef)
    actual = rows["delta"].to_numpy()
    fit.stats["rel_error"] = float(np.mean(np.abs(pred - actual) / actual))
    fit.internal = {"design": design, "coef": coef}
    fit.outliers = identify.outliers(fit.resid, identify.run_keys(rows), "log_delta_residual")
    # The paper's law has every exponent > 0; the fit lets the data say otherwise, out loud.
    fit.notes += [
        f"{p} = {fit.params[p]:.3g} <= 0: against the law's sign (paper: {p} > 0)"
        for p in design.columns
        if fit.params.get(p) is not None and fit.params[p] <= 0
    ]
    return fit


def predict_delta_rows(fit: LawFit, rows: pd.DataFrame) -> np.ndarray:
    """Point prediction of delta for table rows from a fitted delta law."""
    design: DeltaDesign = fit.internal["design"]
    return np.exp(design.matrix(rows["n_params"], rows["tokens"], rows["G"]) @ fit.internal["coef"])


def fit_n_only(rows: pd.DataFrame, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Earlier N-only law, fitted once per granularity: delta = k_G / N^gamma_G."""
    pred = np.full(len(rows), np.nan)
    per_g: dict[str, Any] = {}
    for g, part in rows.groupby(rows["group_size"].astype(str)):
        idx = rows.index.get_indexer(part.index)
        if part["n_params"].nunique() < 2:
            per_g[g] = None
            continue
        sub = fit_delta(part, f"{name}@G={g}", terms=("gamma_N",))
        pred[idx] = predict_delta_rows(sub, part)
        per_g[g] = {"k": sub.params["k"], "gamma_N": sub.params["gamma_N"]}
    return pred, per_g


# ---------------------------------------------------------------- joint fit


def fit_joint(
    bf16: pd.DataFrame, quant: pd.DataFrame, base: LawFit, deltas: dict[str, LawFit], f_scale: float
) -> dict[str, Any]:
    """All runs at once, L = L_bf16 + delta_setting, started from the two-stage estimates."""
    keys = [k for k, f in deltas.items() if "coef" in f.internal]
    quant = quant[quant["fit_key"].isin(keys)]
    params = lmfit.Parameters()
    theta, tied = base.internal["theta"], base.internal["tied"]
    for i, name in enumerate(("A", "B", "E", "alpha")):
        lo, hi = BASE_BOUNDS[name]
        params.add(name, value=float(theta[i]), min=lo, max=hi)
    if tied:
        params.add("beta", expr="alpha")
    else:
        params.add("beta", value=float(theta[4]), min=0.01, max=2.0)
    tags = {key: f"s{i}" for i, key in enumerate(keys)}
    for key in keys:
        design: DeltaDesign = deltas[key].internal["design"]
        coef = deltas[key].internal["coef"]
        params.add(f"{tags[key]}_c0", value=float(coef[0]))
        for j, col in enumerate(design.columns):
            params.add(
                f"{tags[key]}_{col}", value=float(coef[1 + j]), min=-GAMMA_BOUND, max=GAMMA_BOUND
            )
    frames = [bf16.assign(fit_key="bf16"), quant]
    data = pd.concat(frames, ignore_index=True)
    x_n, x_d = data["n_params"].to_numpy() / N_UNIT, data["tokens"].to_numpy() / D_UNIT
    loss = data["loss"].to_numpy()
    mats = {
        k: (
            data["fit_key"].to_numpy() == k,
            deltas[k]
            .internal["design"]
            .matrix(data["n_params"], data["tokens"], data["G"].fillna(2.0)),
        )
        for k in keys
    }

    def resid(p):
        pred = bf16_loss(p.valuesdict(), x_n, x_d)
        for key, (mask, mat) in mats.items():
            cols = deltas[key].internal["design"].columns
            coef = np.array(
                [p[f"{tags[key]}_c0"].value] + [p[f"{tags[key]}_{c}"].value for c in cols]
            )
            pred = pred + mask * np.exp(mat @ coef)
        return np.log(np.maximum(pred, LOSS_FLOOR)) - np.log(loss)

    out = lmfit.Minimizer(resid, params).minimize(
        method="least_squares", loss="huber", f_scale=f_scale
    )
    theta_j = np.array([out.params[n].value for n in ("A", "B", "E", "alpha", "beta")])
    base_params = dict(
        zip(
            BASE_PARAMS,
            map(float, base_raw(theta_j[:4] if tied else theta_j, tied)[0]),
            strict=True,
        )
    )
    delta_params = {}
    for key in keys:
        design = deltas[key].internal["design"]
        coef = np.array(
            [out.params[f"{tags[key]}_c0"].value]
            + [out.params[f"{tags[key]}_{c}"].value for c in design.columns]
        )
        raw = design.to_raw(coef)[0]
        delta_params[key] = {
            p: (float(v) if p == "k" or p in design.columns else None)
            for p, v in zip(DELTA_PARAMS, raw, strict=True)
        }
    names = [n for n in out.params if out.params[n].vary]
    return {
        "base": base_params,
        "delta": delta_params,
        "n_runs": len(data),
        "cost": huber_cost(out.residual, f_scale),
        "converged": bool(out.success),
        "bound_hits": _hits(out.params, tuple(names)),
        "note": "point estimate started from the two-stage fit; intervals come from the two-stage bootstrap",
    }
