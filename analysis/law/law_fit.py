"""Any candidate delta law (formulas.LAWS) fitted the way the paper's law is: Huber loss in log
space with the setting's threshold, the same +-3 box on every exponent, the exponents that
identify.py leaves out of the paper's law left out here too, several starts refined by lmfit.

A law is log delta = offset + X(phi) coef (formulas.DeltaLaw). For fixed nonlinear parameters
phi the fit is the convex box-Huber regression fit already solves (delta_fit.huber_irls), so the
starts are that regression's optimum at each point of the law's starting grid for phi (a profile
over the grid), and lmfit refines the best of them in all parameters at once.

`Engine` fits a law to many weightings of the same points at once (bootstrap resamples, held-out
folds, simulated sweeps): the profile over the grid for fresh fits, then a batched
Levenberg-Marquardt on the Huber loss (as bootstrap.base_lm_batch does for the BF16 law).
The paper's law and its no-D form keep fit_delta itself for their point fit and bootstrap.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lmfit
import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_values, count_cells
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.law.base_fit import SAME_COST, LawFit, huber_cost, on_bound
from qat_sweep.analysis.law.delta_fit import MIN_CELLS, fit_delta, huber_irls
from qat_sweep.analysis.law.formulas import (
    DELTA_PARAMS,
    DeltaLaw,
    Nonlinear,
    Points,
    Term,
    group_label,
)

LM_ITERS = 100
JAC_STEP = 1e-5  # central difference step in log phi


def data_groups(rows: pd.DataFrame) -> tuple[str, ...]:
    """Group labels present, numeric ascending, then the rest (channel)."""
    labels = {group_label(v) for v in rows["group_size"]} - {""}
    numeric = sorted((v for v in labels if v.isdigit()), key=int)
    return tuple(numeric + sorted(labels - set(numeric)))


def base_of(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The BF16 law's A and alpha, or None when it is not identified."""
    if not params or params.get("A") is None or params.get("alpha") is None:
        return None
    return {"A": params["A"], "alpha": params["alpha"]}


def is_plain(law: DeltaLaw) -> bool:
    """A power law in the paper's regressors only (the paper's law, no_D): fit_delta fits it."""
    names = law.params()
    return (
        not law.nonlinear
        and law.offset is None
        and law.shape is None
        and not law.per_group
        and names[0] == "k"
        and set(names[1:]) <= set(DELTA_PARAMS[1:])
        and all(t.feature is _paper_feature(t.param) for t in law.terms())
    )


def _paper_feature(name: str) -> Any:
    from qat_sweep.analysis.law.formulas import GAMMA_TERMS, K_TERM

    return K_TERM.feature if name == "k" else GAMMA_TERMS[name].feature


def huber_rows(resid: np.ndarray, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Summed weighted Huber loss per row (scale per row), NaN residuals count as infinite."""
    a = np.abs(resid)
    s = np.reshape(scale, (-1, 1))
    values = np.where(a <= s, 0.5 * resid**2, s * (a - 0.5 * s))
    values = np.where(np.isfinite(values), values, np.inf)
    return np.sum(np.where(weights > 0, weights * values, 0.0), axis=1)


@dataclass
class Engine:
    """A law's kept terms on fixed points, fitted for many weightings at once.

    theta = [coefficients of the kept terms..., log of each kept nonlinear parameter]."""

    law: DeltaLaw
    terms: tuple[Term, ...]
    groups: tuple[str, ...]
    points: Points
    base: Mapping[str, Any] | None = None
    nonlinear: tuple[Nonlinear, ...] | None = None  # the kept ones (None: all of the law's)

    def __post_init__(self) -> None:
        if self.nonlinear is None:
            self.nonlinear = self.law.nonlinear

    @property
    def kept_nonlinear(self) -> tuple[Nonlinear, ...]:
        return self.nonlinear or ()

    @property
    def n_coef(self) -> int:
        return len(self.terms)

    @property
    def n_theta(self) -> int:
        return len(self.terms) + len(self.kept_nonlinear)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        nonlinear = self.kept_nonlinear
        lo = [-(t.bound or np.inf) for t in self.terms] + [np.log(p.lo) for p in nonlinear]
        hi = [t.bound or np.inf for t in self.terms] + [np.log(p.hi) for p in nonlinear]
        return np.array(lo, float), np.array(hi, float)

    def _nl(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {
            p.param: np.exp(theta[:, self.n_coef + i : self.n_coef + i + 1])
            for i, p in enumerate(self.kept_nonlinear)
        }

    def shape(self, points: Points, nl: Mapping[str, Any]) -> np.ndarray | float:
        """The law's part of log delta that no coefficient multiplies (0 for most laws)."""
        return 0.0 if self.law.shape is None else self.law.shape(points, nl)

    def features(self, points: Points, nl: Mapping[str, Any]) -> np.ndarray:
        """(points, p) when nl holds scalars, (rows, points, p) when it holds column vectors."""
        cols = [np.asarray(t.feature(points, nl), float) for t in self.terms]
        shape = np.broadcast_shapes(*(c.shape for c in cols)) if cols else np.shape(points.n)
        return np.stack([np.broadcast_to(c, shape) for c in cols], axis=-1)

    def offset(self, points: Points, base: Mapping[str, Any] | None = None) -> np.ndarray:
        if self.law.offset is None:
            return np.zeros(np.shape(points.n))
        return np.asarray(self.law.offset(points, base or self.base), float)

    def log_delta(
        self, theta: np.ndarray, points: Points | None = None, base: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """log delta at the points for each row of theta: (rows, points)."""
        points = points or self.points
        theta = np.atleast_2d(theta)
        nl = self._nl(theta)
        x = self.features(points, nl)
        coef = theta[:, : self.n_coef]
        lin = np.einsum("bnp,bp->bn", x, coef) if x.ndim == 3 else coef @ x.T
        out = self.offset(points, base) + lin + self.shape(points, nl)
        if self.law.per_group:
            out = np.where(np.isin(points.group, list(self.groups)), out, np.nan)
        return out

    def _resid(self, theta: np.ndarray, target: np.ndarray) -> np.ndarray:
        nl = self._nl(theta)
        x = self.features(self.points, nl)
        coef = theta[:, : self.n_coef]
        lin = np.einsum("bnp,bp->bn", x, coef) if x.ndim == 3 else coef @ x.T
        return lin + self.shape(self.points, nl) - target

    def _resid_jac(self, theta: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (rows, points) and their Jacobian in theta (rows, points, n_theta)."""
        nl = self._nl(theta)
        shape = (theta.shape[0], target.shape[-1], self.n_coef)
        x = np.broadcast_to(self.features(self.points, nl), shape)
        coef = theta[:, : self.n_coef]
        resid = np.einsum("bnp,bp->bn", x, coef) + self.shape(self.points, nl) - target
        cols = [x]
        for p in self.kept_nonlinear:
            up = {**nl, p.param: nl[p.param] * np.exp(JAC_STEP)}
            down = {**nl, p.param: nl[p.param] * np.exp(-JAC_STEP)}
            diff = np.broadcast_to(
                self.features(self.points, up) - self.features(self.points, down), shape
            )
            d_shape = self.shape(self.points, up) - self.shape(self.points, down)
            d_lin = np.einsum("bnp,bp->bn", diff, coef) + d_shape
            cols.append((d_lin / (2 * JAC_STEP))[..., None])
        return resid, np.concatenate(cols, axis=-1)

    def _lm(
        self, theta: np.ndarray, target: np.ndarray, weights: np.ndarray, scale: np.ndarray
    ) -> np.ndarray:
        """Batched Levenberg-Marquardt on the summed weighted Huber loss, clipped to the box;
        a row stops once a step gains less than 1e-10 of its cost (or its damping explodes)."""
        lo, hi = self.bounds()
        theta = np.clip(theta, lo, hi)
        rows = theta.shape[0]
        target = np.broadcast_to(target, weights.shape)
        scale = np.broadcast_to(np.asarray(scale, float), (rows,))
        lam = np.full(rows, 1e-3)
        eye = np.eye(theta.shape[1])
        live = np.isfinite(theta).all(axis=1)
        cost = np.full(rows, np.inf)
        idx = np.flatnonzero(live)
        cost[idx] = huber_rows(self._resid(theta[idx], target[idx]), weights[idx], scale[idx])
        live &= np.isfinite(cost)
        active = np.flatnonzero(live)
        for _ in range(LM_ITERS):
            if not active.size:
                break
            th, tg, wt, sc = theta[active], target[active], weights[active], scale[active]
            resid, jac = self._resid_jac(th, tg)
            w = wt * np.minimum(1.0, sc[:, None] / np.maximum(np.abs(resid), 1e-300))
            wj = jac * w[..., None]
            hess = np.matmul(wj.transpose(0, 2, 1), jac)
            grad = np.matmul(wj.transpose(0, 2, 1), resid[..., None])[..., 0]
            damped = hess + lam[active, None, None] * (hess * eye) + 1e-12 * eye
            try:
                step = np.linalg.solve(damped, -grad[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = (np.linalg.pinv(damped) @ -grad[..., None])[..., 0]
            trial = np.clip(th + np.nan_to_num(step), lo, hi)
            trial_cost = huber_rows(self._resid(trial, tg), wt, sc)
            better = trial_cost < cost[active]
            gain = np.where(
                better, (cost[active] - trial_cost) / np.maximum(cost[active], 1e-300), 0.0
            )
            theta[active] = np.where(better[:, None], trial, th)
            cost[active] = np.where(better, trial_cost, cost[active])
            lam[active] = np.where(better, lam[active] / 3, lam[active] * 4)
            done = (better & (gain < 1e-10)) | (lam[active] > 1e7)
            active = active[~done]
        theta[~live] = np.nan
        return theta

    def fit(
        self,
        y: np.ndarray,
        weights: np.ndarray,
        scale: float | np.ndarray,
        start: np.ndarray | None = None,
        base_rows: Mapping[str, np.ndarray] | None = None,
        y_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """theta for each row of `weights` (rows, points); NaN rows where the weighted design
        cannot identify the kept terms. `start` warm-starts every row (bootstrap); without it
        the nonlinear parameters are profiled over the law's starting grid first (fresh fits).
        `base_rows` (A, alpha as column vectors) gives each row its own offset; `y_rows` each
        row its own log gaps (simulated sweeps)."""
        weights = np.atleast_2d(weights).astype(float)
        rows = weights.shape[0]
        scale = np.broadcast_to(np.asarray(scale, float), (rows,))
        target = (y if y_rows is None else y_rows) - self.offset(self.points, base_rows)
        target = np.broadcast_to(target, weights.shape)
        lo, hi = self.bounds()
        if not self.kept_nonlinear:
            target = target - self.shape(self.points, {})
            x = self.features(self.points, {})
            coef0 = (
                np.linalg.lstsq(x, target.mean(axis=0), rcond=None)[0] if start is None else start
            )
            return huber_irls(x, target, weights, scale, np.clip(coef0, lo, hi), lower=lo, upper=hi)
        if start is not None:
            theta0 = np.broadcast_to(np.asarray(start, float), (rows, self.n_theta)).copy()
        else:
            theta0 = self.profile(target, weights, scale)[0]
        return self._lm(theta0, target, weights, scale)

    def grid(self) -> list[np.ndarray]:
        """Log nonlinear parameters at every point of the law's starting grid."""
        return [
            np.log(np.array(point))
            for point in itertools.product(*(p.grid for p in self.kept_nonlinear))
        ]

    def profile(
        self, target: np.ndarray, weights: np.ndarray, scale: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The box-Huber optimum of the coefficients at each grid point; per row the best one
        (rows, n_theta), and every grid point's (theta, cost) for the point fit's starts."""
        rows = weights.shape[0]
        lo, hi = self.bounds()
        best = np.full((rows, self.n_theta), np.nan)
        best_cost = np.full(rows, np.inf)
        everything = []
        for log_phi in self.grid():
            nl = {
                p.param: float(np.exp(v)) for p, v in zip(self.kept_nonlinear, log_phi, strict=True)
            }
            x = self.features(self.points, nl)
            shifted = target - self.shape(self.points, nl)
            coef0 = np.linalg.lstsq(x, shifted.mean(axis=0), rcond=None)[0]
            coef = huber_irls(
                x, shifted, weights, scale, np.clip(coef0, lo[: self.n_coef], hi[: self.n_coef]),
                lower=lo[: self.n_coef], upper=hi[: self.n_coef],
            )  # fmt: skip
            cost = huber_rows(coef @ x.T - shifted, weights, scale)
            theta = np.column_stack([coef, np.broadcast_to(log_phi, (rows, len(log_phi)))])
            everything.append((theta, cost))
            take = np.isfinite(cost) & (cost < best_cost)
            best[take], best_cost[take] = theta[take], cost[take]
        return best, everything

    def to_params(
        self, theta: np.ndarray, base: Mapping[str, Any] | None = None
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """Reported parameters per row in the law's order; a term left out is 0 (as
        delta_fit.DeltaDesign.to_raw writes it: it contributes nothing)."""
        names = self.law.params(self.groups)
        theta = np.atleast_2d(theta)
        out = np.zeros((theta.shape[0], len(names)))
        base = base or self.base
        for j, term in enumerate(self.terms):
            value = term.to_param(theta[:, j : j + 1], base)
            out[:, names.index(term.param)] = np.broadcast_to(value, (theta.shape[0], 1))[:, 0]
        for i, p in enumerate(self.kept_nonlinear):
            out[:, names.index(p.param)] = np.exp(theta[:, self.n_coef + i])
        out[~np.isfinite(theta).all(axis=1)] = np.nan
        return names, out

    def from_params(self, params: Mapping[str, Any]) -> np.ndarray:
        """theta of reported parameters (the inverse of to_params for one row)."""
        coef = [float(t.from_param(params[t.param], self.base)) for t in self.terms]
        return np.array(coef + [np.log(float(params[p.param])) for p in self.kept_nonlinear])


def engine_for(
    law: DeltaLaw,
    rows: pd.DataFrame,
    dropped: set[str] | list[str],
    base: Mapping[str, Any] | None = None,
) -> Engine:
    """The law on these rows with the terms identify.py left out of the paper's law dropped."""
    groups = data_groups(rows) if law.per_group else ()
    terms = tuple(t for t in law.terms(groups) if t.param not in set(dropped))
    nonlinear = tuple(p for p in law.nonlinear if p.drop_with not in set(dropped))
    return Engine(law, terms, groups, Points.of(rows), base, nonlinear)


def why_not_fitted(
    law: DeltaLaw, rows: pd.DataFrame, paper: LawFit, base: Mapping[str, Any] | None
) -> str | None:
    """Why the data cannot identify this law at all (None: it can be fitted)."""
    if law.uses_base and base is None:
        return "needs the BF16 law's A and alpha, which this fit could not identify"
    for p in law.nonlinear:
        if p.axis == "D/N":
            if "gamma_D" in paper.not_identifiable:
                return "gamma_D is not identifiable in this grid: there is no D term to level off"
            n_cell, d_cell = cell_values(rows)
            ratios = len(set(np.round(np.log(d_cell / n_cell), 6)))
            if ratios < 3:
                return f"{ratios} distinct D/N in this grid: a bend needs at least 3"
    if law.pooled:
        starts = np.unique(np.asarray(rows.get("start_fraction", [0.0]), float))
        if len(starts) < 2 or not (starts > 0).any():
            return (
                f"{len(starts)} QAT start fraction(s) ({', '.join(f'{f:g}' for f in starts)}): "
                "the BF16 and QAT token terms need runs that start QAT at two fractions or more"
            )
    return None


def _interval_mode(rows: pd.DataFrame, n_params: int) -> tuple[str, int, int]:
    points, cells = identify.design_points(rows), count_cells(rows)
    mode = "cells" if cells >= max(MIN_CELLS, n_params) else "runs"
    if points <= n_params or cells < n_params:
        mode = "none"
    return mode, points, cells


def fit_law(
    rows: pd.DataFrame,
    law: DeltaLaw,
    name: str,
    paper: LawFit,
    base_params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> LawFit | str:
    """One law on one setting's paired gaps, or the reason the data cannot identify it.

    Every law of a setting uses the paper fit's Huber threshold (the same robust loss) and
    leaves out the exponents identify.py left out of the paper's law."""
    base = base_of(base_params)
    why = why_not_fitted(law, rows, paper, base)
    if why:
        return why
    if law.name == "paper":
        return paper
    if is_plain(law):
        fit = fit_delta(rows, name, paper.f_scale, tuple(law.params()[1:]), seed=seed)
        fit.params = {p: fit.params[p] for p in law.params()}  # only the law's own parameters
        fit.internal["law"] = law.name
        return fit
    engine = engine_for(law, rows, paper.not_identifiable, base)
    fit = _new_fit(rows, engine, name, paper)
    y = np.log(rows["delta"].to_numpy())
    target = (y - engine.offset(engine.points))[None, :]
    results = _refine(engine, _starts(engine, y, target, fit.f_scale, seed), target, fit.f_scale)
    if not results:
        return "no start gave a finite fit"
    best_cost, best = min(results, key=lambda item: item[0])
    theta = np.array([best.params[f"t{j}"].value for j in range(engine.n_theta)])
    names, values = engine.to_params(theta)
    kept = {t.param for t in engine.terms} | {p.param for p in engine.kept_nonlinear}
    fit.params = {
        n: (float(v) if n in kept else None) for n, v in zip(names, values[0], strict=True)
    }
    fit.cost, fit.converged = best_cost, bool(best.success)
    fit.n_starts = len(results)
    fit.frac_best = sum(c <= best_cost * (1 + SAME_COST) + 1e-12 for c, _ in results) / len(results)
    _bounds_report(fit, engine, theta)
    fit.resid = best.residual.copy()
    pred = np.exp(engine.log_delta(theta[None, :])[0])
    actual = rows["delta"].to_numpy()
    fit.stats["rel_error"] = float(np.mean(np.abs(pred - actual) / actual))
    fit.outliers = identify.outliers(fit.resid, identify.run_keys(rows), "log_delta_residual")
    fit.internal = {
        "law": law.name,
        "engine": engine,
        "theta": theta,
        "predict": lambda frame, e=engine, t=theta: np.exp(
            e.log_delta(t[None, :], Points.of(frame))[0]
        ),
    }
    fit.notes += [
        f"{p} = {fit.params[p]:.3g} <= 0: against the law's sign (paper: {p} > 0)"
        for p in ("gamma_N", "gamma_D", "gamma_G")
        if fit.params.get(p) is not None and fit.params[p] <= 0
    ]
    return fit


def _new_fit(rows: pd.DataFrame, engine: Engine, name: str, paper: LawFit) -> LawFit:
    """The fit before its parameters: the paper fit's design report with this law's count of
    parameters, its left-out exponents, and why its intervals cannot be trusted, if so."""
    law, n_params = engine.law, engine.n_theta
    fit = LawFit(name, {}, len(rows), count_cells(rows), np.nan, False, paper.f_scale, 0, 0.0)
    mode, points, cells = _interval_mode(rows, n_params)
    fit.identifiability = {
        **paper.identifiability,
        "n_params": n_params,
        "exact_fit": points <= n_params,
        "intervals": mode,
        "law_needs": law.needs(engine.groups),
    }
    fit.not_identifiable = sorted(set(paper.not_identifiable) & set(law.params(engine.groups)))
    fit.notes = [
        f"{p} left out as in the paper's law (not identifiable in this grid)"
        for p in fit.not_identifiable
    ]
    if points <= n_params:
        flag = f"not identifiable: exact fit ({points} points, {n_params} parameters)"
        fit.interval_flags.update(dict.fromkeys(law.params(engine.groups), flag))
        fit.notes.append(f"exact fit: {points} distinct (N, D, G) points for {n_params} parameters")
    elif cells < n_params:
        flag = f"not identifiable: {cells} (N, D) cells for {n_params} parameters"
        fit.interval_flags.update(dict.fromkeys(law.params(engine.groups), flag))
    return fit


def _starts(
    engine: Engine, y: np.ndarray, target: np.ndarray, scale: float, seed: int
) -> list[np.ndarray]:
    """The best three points of the law's starting grid (box-Huber optimum of the coefficients
    at each) and a Levenberg-Marquardt run from the best; without nonlinear parameters, the
    unique box-Huber optimum and two jittered copies (fit_delta's starts)."""
    weights = np.ones((1, len(y)))
    if engine.kept_nonlinear:
        _, grid = engine.profile(target, weights, np.array([scale]))
        ranked = sorted(grid, key=lambda item: item[1][0])
        starts = [theta[0] for theta, cost in ranked[:3] if np.isfinite(cost[0])]
        starts.append(engine._lm(ranked[0][0].copy(), target, weights, np.array([scale]))[0])
        return starts
    first = engine.fit(y, weights, scale)[0]
    rng = np.random.default_rng(seed)
    return [first] + [first + rng.normal(0, 0.3, first.shape) for _ in range(2)]


def _refine(
    engine: Engine, starts: list[np.ndarray], target: np.ndarray, scale: float
) -> list[tuple[float, Any]]:
    """lmfit (least squares, Huber loss, the box) from every finite start: (cost, result)."""
    lo, hi = engine.bounds()
    results = []
    for start in starts:
        if not np.all(np.isfinite(start)):
            continue
        params = lmfit.Parameters()
        for j in range(engine.n_theta):
            params.add(f"t{j}", value=float(np.clip(start[j], lo[j], hi[j])), min=lo[j], max=hi[j])

        def resid(p, target=target[0]):
            theta = np.array([[p[f"t{j}"].value for j in range(engine.n_theta)]])
            return engine._resid(theta, target[None, :])[0]

        out = lmfit.Minimizer(resid, params).minimize(
            method="least_squares", loss="huber", f_scale=scale
        )
        results.append((huber_cost(out.residual, scale), out))
    return results


def _bounds_report(fit: LawFit, engine: Engine, theta: np.ndarray) -> None:
    """Parameters on their box; a nonlinear one on its bound says nothing (flagged)."""
    lo, hi = engine.bounds()
    names = [t.param for t in engine.terms] + [p.param for p in engine.kept_nonlinear]
    fit.bound_hits = [
        n
        for j, n in enumerate(names)
        if np.isfinite(lo[j]) and (on_bound(theta[j], lo[j]) or on_bound(theta[j], hi[j]))
    ]
    for p in engine.kept_nonlinear:
        value = fit.params[p.param]
        if on_bound(np.log(value), np.log(p.hi)) or on_bound(np.log(value), np.log(p.lo)):
            fit.interval_flags[p.param] = (
                f"not identifiable: {p.param} = {value:.3g} on its bound [{p.lo:g}, {p.hi:g}]"
            )
            fit.notes.append(
                f"{p.param} on its bound {value:.3g}: the data show no bend in {p.axis} within "
                "the bounds"
                + ("; the law reduces to the paper's there" if value >= p.hi * 0.999 else "")
                if engine.law.levels_off
                else f"{p.param} on its bound {value:.3g}: the data do not place it within "
                f"[{p.lo:g}, {p.hi:g}] (its axis: {p.axis})"
            )


def aicc(resid: np.ndarray, n_params: int) -> float | None:
    """AICc of a fit with Gaussian log residuals (for reference; selection is held out)."""
    n, k = resid.size, n_params + 1  # the residual variance is a parameter too
    rss = float(np.sum(resid**2))
    if n - k - 1 <= 0 or rss <= 0:
        return None
    return float(n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))
