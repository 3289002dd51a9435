"""The delta law, log-linear per setting: a robust linear fit (IRLS) gives the start and lmfit
only refines it within bounds. Exponents the grid cannot separate (identify.py) are left out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import lmfit
import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import count_cells
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.law.base_fit import SAME_COST, LawFit, bound_hits, huber_cost, robust_scale
from qat_sweep.analysis.law.formulas import DELTA_PARAMS, GAMMA_BOUND, delta_regressors

DELTA_COLUMNS = ("gamma_D", "gamma_G", "gamma_N")


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
    block = identify.fixed_block(rows)
    if block and "gamma_G" in terms:
        dropped["gamma_G"] = identify.fixed_block_why(*block)
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
    """Batched argmin_c sum_n w_bn (x_n c - y_bn)^2 subject to lower <= c <= upper (y: one
    target for every row, or one per row).

    The box optimum is the feasible face optimum of lowest cost, so rows whose free solution is
    infeasible try every face (free, at lower, at upper per bounded coefficient): 27 faces for
    the three exponents of the delta law.
    """
    b, p = w.shape[0], x.shape[1]
    y = np.broadcast_to(np.asarray(y, float), w.shape)
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
        target = y[rows].copy()
        for j, v in fixed.items():
            c[:, j] = v
            target = target - x[:, j] * v
        if free:
            xf = x[:, free]
            wr = w[rows]
            hess = np.einsum("bn,ni,nj->bij", wr, xf, xf) + 1e-12 * np.eye(len(free))
            grad = np.einsum("bn,ni,bn->bi", wr, xf, target)
            try:
                c[:, free] = np.linalg.solve(hess, grad[..., None])[..., 0]
            except np.linalg.LinAlgError:  # an exactly singular step: the least-norm one
                c[:, free] = (np.linalg.pinv(hess) @ grad[..., None])[..., 0]
        tol = 1e-12 * (1 + np.abs(c))
        feasible = np.all((c >= lower - tol) & (c <= upper + tol), axis=1)
        cost = np.einsum("bn,bn->b", w[rows], (c @ x.T - y[rows]) ** 2)
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
    f_scale: float | np.ndarray,
    coef0: np.ndarray,
    iters: int = 100,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """Batched robust linear fit: one Huber regression per row of `weights` (bootstrap counts),
    within the box [lower, upper] (the point fit's bounds; default unbounded). `y` and
    `f_scale` may also be given per row (shapes (rows, points) and (rows,)).

    Huber IRLS is a majorise-minimise scheme, so solving each reweighted step inside the box
    converges to the box-constrained Huber optimum. Resamples whose weighted design is singular
    come back as NaN.
    """
    p = x.shape[1]
    lower = np.full(p, -np.inf) if lower is None else np.asarray(lower, float)
    upper = np.full(p, np.inf) if upper is None else np.asarray(upper, float)
    coef0 = np.asarray(coef0, float)
    coef = np.clip(np.broadcast_to(coef0, (weights.shape[0], p)).copy(), lower, upper)
    scale = np.broadcast_to(np.reshape(np.asarray(f_scale, float), (-1, 1)), (len(coef), 1))
    y = np.broadcast_to(np.asarray(y, float), weights.shape)
    active = np.arange(len(coef))  # rows still moving: a converged row stops being solved
    for _ in range(iters):
        resid = coef[active] @ x.T - y[active]
        w = weights[active] * np.minimum(1.0, scale[active] / np.maximum(np.abs(resid), 1e-300))
        new = _box_wls(x, y[active], w, lower, upper)
        moving = np.max(np.abs(new - coef[active]), axis=1) >= 1e-10  # NaN: stopped
        coef[active] = new
        active = active[moving]
        if not active.size:
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
    fixed = identify.fixed_block(rows) is not None
    for name, why in design.dropped.items():
        decisions[name] = {
            "separable": False,
            "why": why,
            "action": "refit without it (fixed at 0)",
            **({"fixed_by_format": True} if fixed and name == "gamma_G" else {}),
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
            entry["runs_to_separate"] = identify.remedy(name, entry)
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
        f"{identify.remedy(c, exponents.get(c, {}))}."
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
    fit.bound_hits = bound_hits(best.params, design.columns)
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
    """Point prediction of delta for table rows from a fitted delta law (any law: the ones
    law_fit.py fits carry their own predictor)."""
    if "predict" in fit.internal:
        return fit.internal["predict"](rows)
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
