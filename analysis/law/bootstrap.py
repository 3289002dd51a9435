"""Bootstrap over (N, D) cells: a BF16 run and its QAT twins share noise, so whole cells are
resampled together. Each resample is a vector of cell counts, i.e. a weight per run, which lets
every refit run batched in numpy, warm-started from the point estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.law.base_fit import BASE_BOUNDS, D_UNIT, N_UNIT, LawFit, base_raw
from qat_sweep.analysis.law.delta_fit import MIN_CELLS, huber_irls
from qat_sweep.analysis.law.formulas import (
    BASE_PARAMS,
    DELTA_PARAMS,
    log_bf16_jacobian,
    log_bf16_theta,
)

from qat_sweep.common import progress

EXPONENTS = ("alpha", "beta", "gamma_N", "gamma_D", "gamma_G")
SCALES = ("A", "B", "k", "c")  # positive multipliers: judged by the ratio of their interval's ends
WIDE_EXPONENT = 2.0  # an exponent's 95% interval wider than this says nothing about it
WIDE_RATIO = 100.0  # a multiplier's interval spanning two orders of magnitude, likewise


def cell_weights(cells: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_rows) run weights = how often each run's cell was drawn."""
    codes, uniques = pd.factorize(pd.Series(list(map(tuple, cells))))
    n_cells = len(uniques)
    draws = rng.integers(0, n_cells, size=(n_boot, n_cells))
    counts = np.stack([np.bincount(row, minlength=n_cells) for row in draws])
    return counts[:, codes].astype(float)


def row_weights(n_rows: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Plain bootstrap over runs, for fits that span too few cells."""
    draws = rng.integers(0, n_rows, size=(n_boot, n_rows))
    return np.stack([np.bincount(row, minlength=n_rows) for row in draws]).astype(float)


def base_lm_batch(
    theta0: np.ndarray,
    x_n: np.ndarray,
    x_d: np.ndarray,
    log_loss: np.ndarray,
    weights: np.ndarray,
    tied: bool,
    f_scale: float,
    iters: int = 200,
) -> np.ndarray:
    """Levenberg-Marquardt on the weighted summed Huber loss, one problem per weight row."""
    names = ("A", "B", "E", "alpha") + (() if tied else ("beta",))
    lo = np.array([BASE_BOUNDS[n][0] for n in names])
    hi = np.array([BASE_BOUNDS[n][1] for n in names])
    theta = np.tile(theta0, (weights.shape[0], 1)).astype(float)
    lam = np.full(weights.shape[0], 1e-3)

    def cost_of(th):
        r = log_bf16_theta(th, x_n, x_d, tied) - log_loss
        a = np.abs(r)
        return np.sum(
            weights * np.where(a <= f_scale, 0.5 * r**2, f_scale * (a - 0.5 * f_scale)), axis=1
        )

    cost = cost_of(theta)
    eye = np.eye(len(names))
    for _ in range(iters):
        log_pred, jac = log_bf16_jacobian(theta, x_n, x_d, tied)
        resid = log_pred - log_loss
        w = weights * np.minimum(1.0, f_scale / np.maximum(np.abs(resid), 1e-300))
        hess = np.einsum("bn,bni,bnj->bij", w, jac, jac)
        grad = np.einsum("bn,bni,bn->bi", w, jac, resid)
        damp = lam[:, None, None] * (hess * eye + 1e-12 * eye)
        try:
            step = np.linalg.solve(hess + damp, -grad[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a flat direction (e.g. A = 0 zeroes d/d alpha)
            step = (np.linalg.pinv(hess + damp) @ -grad[..., None])[..., 0]
        trial = np.clip(theta + step, lo, hi)
        trial_cost = cost_of(trial)
        better = trial_cost < cost
        gain = np.where(better, (cost - trial_cost) / np.maximum(cost, 1e-300), 0.0)
        theta = np.where(better[:, None], trial, theta)
        cost = np.where(better, trial_cost, cost)
        lam = np.where(better, lam / 3, lam * 4)
        if np.all((better & (gain < 1e-12)) | (lam > 1e7)):
            break
    return theta


def percentile_95(samples: np.ndarray) -> list[float] | None:
    """95% percentile interval of the finite samples (None: no usable sample)."""
    samples = samples[np.isfinite(samples)]
    return [float(v) for v in np.percentile(samples, [2.5, 97.5])] if samples.size else None


def percentile_ci(samples: np.ndarray) -> list[list[float] | None]:
    """95% percentile interval per column (None where no resample was usable)."""
    return [percentile_95(col) for col in samples.T]


def intervals(fit: LawFit, names: tuple[str, ...], draws: np.ndarray) -> dict[str, list | None]:
    """95% percentile intervals that contain their point estimate, flagged where they say
    nothing (an exponent's interval wider than WIDE_EXPONENT, a multiplier's than WIDE_RATIO)."""
    out: dict[str, list | None] = {}
    for name, ci in zip(names, percentile_ci(draws), strict=True):
        point = fit.params.get(name)
        if ci is None or point is None:
            out[name] = None
            continue
        lo, hi = min(ci[0], point), max(ci[1], point)
        if max(ci[0] - point, point - ci[1]) > 1e-9 * (1 + abs(point)):
            fit.notes.append(
                f"the bootstrap interval of {name} [{ci[0]:.4g}, {ci[1]:.4g}] lay beside its "
                f"estimate {point:.4g} (skewed or bound-limited resamples): extended to it"
            )
            fit.interval_flags.setdefault(name, "bootstrap interval extended to the estimate")
        wide = None
        if name in EXPONENTS and hi - lo > WIDE_EXPONENT:
            wide = f"not identifiable: its 95% interval spans {hi - lo:.2g} in the exponent"
        elif (name in SCALES or name.startswith("eff[")) and (lo <= 0 or hi / lo > WIDE_RATIO):
            wide = "not identifiable: its 95% interval " + (
                f"spans {np.log10(hi / lo):.1f} orders of magnitude" if lo > 0 else "reaches 0"
            )
        if wide and not fit.interval_flags.get(name, "").startswith("not identifiable"):
            fit.interval_flags[name] = wide
        out[name] = [float(lo), float(hi)]
    return out


def bootstrap(
    bf16: pd.DataFrame,
    quant: pd.DataFrame,
    base: LawFit,
    deltas: dict[str, LawFit],
    n_boot: int,
    seed: int,
    laws: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Fill `boot` and `ci95` of every fit (in place) from shared cell resamples: the base law,
    each setting's paper law (`deltas`) and every other law fitted (`laws`: setting -> name ->
    LawFit, or the reason it was not fitted), all on the same resamples.

    Every refit obeys the point fit's bounds and ties; fits the grid cannot give intervals
    (exact fits, fewer cells than parameters) get none, with the reason in `interval_flags`.
    """
    if n_boot <= 0:
        return
    rng = np.random.default_rng(seed)
    rows = pd.concat([bf16, quant], ignore_index=True)
    weights = cell_weights(np.column_stack(cell_values(rows)), n_boot, rng)
    w_base, w_quant = weights[:, : len(bf16)], weights[:, len(bf16) :]
    if "theta" in base.internal and not base.identifiability.get("exact_fit"):
        tied = base.internal["tied"]
        x_n, x_d = bf16["n_params"].to_numpy() / N_UNIT, bf16["tokens"].to_numpy() / D_UNIT
        n_cell, d_cell = cell_values(bf16)
        ok = _spans(n_cell, w_base) & _spans(d_cell, w_base)
        theta = base_lm_batch(
            base.internal["theta"],
            x_n,
            x_d,
            np.log(bf16["loss"].to_numpy()),
            w_base,
            tied,
            base.f_scale,
        )
        base.boot = base_raw(theta, tied)
        base.boot[~ok] = np.nan
        base.ci95 = intervals(base, BASE_PARAMS, base.boot)
    elif "theta" in base.internal:
        base.ci95 = dict.fromkeys(BASE_PARAMS)
    for key, fit in progress(deltas.items(), "bootstrap: paper law", len(deltas), "setting"):
        if "coef" not in fit.internal:
            continue
        mode = fit.identifiability.get("intervals", "cells")
        if mode == "none":
            fit.ci95 = dict.fromkeys(DELTA_PARAMS)
            continue
        mask = (quant["fit_key"] == key).to_numpy()
        part = quant[mask]
        _delta_draws(fit, part, _weights(fit, mode, w_quant[:, mask], n_boot, rng))
    rng = np.random.default_rng(seed + 1)  # the other laws: the paper's draws stay as they were
    others = laws or {}
    for key, fits in progress(others.items(), "bootstrap: other laws", len(others), "setting"):
        mask = (quant["fit_key"] == key).to_numpy()
        part = quant[mask]
        for fit in fits.values():
            if isinstance(fit, str) or fit is deltas.get(key):
                continue
            names = tuple(fit.params)
            mode = fit.identifiability.get("intervals", "cells")
            if mode == "none":
                fit.ci95 = dict.fromkeys(names)
                continue
            w = _weights(fit, mode, w_quant[:, mask], n_boot, rng)
            if "engine" in fit.internal:
                _engine_draws(fit, part, w, base)
            else:
                _delta_draws(fit, part, w)


def _weights(fit: LawFit, mode: str, cell_w: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """The setting's resample weights: whole (N, D) cells when it has enough, else single runs
    (said in the fit's notes)."""
    if mode == "cells" and fit.n_cells >= MIN_CELLS:
        return cell_w
    fit.notes.append(f"only {fit.n_cells} (N, D) cells: bootstrap resamples runs, not cells")
    return row_weights(cell_w.shape[1], n_boot, rng)


def _delta_draws(fit: LawFit, part: pd.DataFrame, w: np.ndarray) -> None:
    """Draws of a fit_delta law (the paper's, or its no-D form): its own columns only."""
    design = fit.internal["design"]
    x = design.matrix(part["n_params"], part["tokens"], part["G"])
    lower, upper = design.bounds()
    coef = huber_irls(
        x, np.log(part["delta"].to_numpy()), w, fit.f_scale, fit.internal["coef"],
        lower=lower, upper=upper,
    )  # fmt: skip
    raw = design.to_raw(coef)
    raw[~np.isfinite(coef).all(axis=1)] = np.nan  # singular resample: no draw at all
    names = tuple(fit.params)
    fit.boot = raw[:, [DELTA_PARAMS.index(p) for p in names]]
    fit.ci95 = intervals(fit, names, fit.boot)


def _engine_draws(fit: LawFit, part: pd.DataFrame, w: np.ndarray, base: LawFit) -> None:
    """Draws of any other law: its batched fit warm-started at the point estimate; a law on
    the BF16 law takes each resample's own A and alpha (the same resample of the cells)."""
    engine = fit.internal["engine"]
    base_rows = None
    if engine.law.uses_base:
        if base.boot is not None and len(base.boot) == len(w):
            base_rows = {"A": base.boot[:, 0:1], "alpha": base.boot[:, 1:2]}
            bad = ~np.isfinite(base.boot[:, :2]).all(axis=1)
            w = np.where(bad[:, None], 0.0, w)  # no BF16 draw: no draw of this law either
        else:
            fit.notes.append(
                "no BF16 draws: its intervals hold the BF16 law's A and alpha at their estimates"
            )
    y = np.log(part["delta"].to_numpy())
    theta = engine.fit(y, w, fit.f_scale, start=fit.internal["theta"], base_rows=base_rows)
    names, draws = engine.to_params(theta, base_rows)
    fit.boot = draws
    fit.ci95 = intervals(fit, names, fit.boot)


def _spans(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resamples that still contain at least two distinct values (cells) of a regressor."""
    codes = pd.factorize(values)[0]
    present = np.stack(
        [np.bincount(codes, weights=w, minlength=codes.max() + 1) > 0 for w in weights]
    )
    return present.sum(axis=1) >= 2
