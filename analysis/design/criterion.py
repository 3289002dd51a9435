"""The c-optimal criterion of `qat-sweep suggest`, linearised at the fitted law.

The variance of log delta-hat at each target under the estimator `fit` uses, Huber regression
in log space, as the M-estimator sandwich c' A^-1 B A^-1 c (TargetState), with the delta method
for each run's gap noise and the covariance between runs that share one BF16 twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.law.formulas import PAPER, FittedLaw, Points, delta_regressors
from scipy.special import ndtri

if TYPE_CHECKING:
    from qat_sweep.analysis.design.simulate import Target

Z95 = 1.959964
NORMAL_QUANTILES = ndtri((np.arange(256) + 0.5) / 256)  # a run's gap noise, in SDs


def features(n, d, g) -> np.ndarray:
    """Rows [1, -log N, log D, log log2 G]: the paper's law is linear in these (log space), in
    the order of its parameters (k, gamma_N, gamma_D, gamma_G) as FittedLaw.gradient has them."""
    r = delta_regressors(*(np.atleast_1d(np.asarray(v, float)) for v in (n, d, g)))
    return np.column_stack([np.ones_like(r["gamma_N"]), r["gamma_N"], r["gamma_D"], r["gamma_G"]])


def as_law(law: FittedLaw | dict[str, float]) -> FittedLaw:
    """A fitted law; a plain parameter dict is the paper's law."""
    return law if isinstance(law, FittedLaw) else FittedLaw(PAPER, law)


@dataclass
class Runs:
    """Design rows of one setting: the law's gradient in log space (the regressors, for the
    paper's law), predicted delta, twin cell id."""

    x: np.ndarray
    delta: np.ndarray
    cell: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, law: FittedLaw | dict[str, float]) -> Runs:
        law, points = as_law(law), Points.of(frame)
        return cls(law.gradient(points), law.delta(points), cell_keys(frame))


def cell_keys(frame: pd.DataFrame) -> np.ndarray:
    """The BF16 twin cell of each row: (N cell, D cell, LR, seed), as collect pairs them."""
    cols = (*cell_values(frame), *(frame[c].astype(float) for c in ("lr", "seed")))
    return np.array(
        ["|".join(f"{v:.8g}" for v in vals) for vals in zip(*cols, strict=True)], dtype=object
    )


@dataclass
class TargetState:
    """The runs of one target's setting and the linearised variance of its Huber fit.

    Per run, the log gap's noise is s = sqrt(2) sigma / delta (delta method, twin and run
    independent); with the fit's threshold c (1.345 x the typical s, floor 0.01 as in fit),
    Huber's psi has slope a = P(|r| < c) and variance b = E[min(r, c)^2]. The estimator's
    variance is the sandwich A^-1 B A^-1 with A = sum a x x' and B = sum (b - a^2 sigma^2 /
    delta^2) x x' + sigma^2 sum_cells t t', t = sum a x / delta over the runs sharing a twin.
    """

    c: np.ndarray
    sigma: float
    x: list[np.ndarray] = field(default_factory=list)
    delta: list[float] = field(default_factory=list)
    cell: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, c: np.ndarray, done: Runs, sigma: float) -> TargetState:
        state = cls(c, sigma)
        for i in range(len(done.delta)):
            state.add(done.x[i], done.delta[i], done.cell[i])
        return state

    @classmethod
    def at_target(
        cls, target: Target, law: FittedLaw | dict[str, float], done: pd.DataFrame, sigma: float
    ) -> TargetState:
        """The target's state from the done runs of its setting (the law's linearisation)."""
        point = Points.at(target.n_params, target.tokens, target.G, target.group_size)
        c = as_law(law).gradient(point)[0]
        return cls.start(c, Runs.of(done[done["fit_key"] == target.fit_key], law), sigma)

    def add(self, x: np.ndarray, delta: float, cell: str) -> None:
        self.x.append(x)
        self.delta.append(float(delta))
        self.cell.append(cell)

    def _log_gap_error(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """r = log(gap / delta) at fixed normal quantiles of the gap noise, and which are kept
        (fit excludes non-positive gaps): the log of a noisy gap is far from Gaussian."""
        s = np.sqrt(2.0) * self.sigma / np.asarray(delta, float)
        ratio = 1.0 + s[:, None] * NORMAL_QUANTILES[None, :]
        kept = ratio > 0
        return np.log(np.where(kept, ratio, 1.0)), kept

    def _huber(self, delta: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per run: slope a = E[psi'] and variance b = Var[psi] of Huber's psi, over kept gaps."""
        r, kept = self._log_gap_error(delta)
        a = np.mean(kept & (np.abs(r) < threshold), axis=1)
        psi = np.where(kept, np.clip(r, -threshold, threshold), 0.0)
        return a, psi.var(axis=1)

    def _threshold(self, delta: np.ndarray) -> float:
        """fit's Huber threshold: 1.345 x MAD-sigma of the residuals (floor 0.01), pooled."""
        r, kept = self._log_gap_error(delta)
        r = r[kept]
        mad = np.median(np.abs(r - np.median(r))) * 1.4826 if r.size else 0.0
        return max(1.345 * float(mad), 0.01)

    def _sums(self):
        delta = np.array(self.delta)
        threshold = self._threshold(delta)
        a, b = self._huber(delta, threshold)
        x = np.array(self.x)
        outer = np.einsum("ni,nj->nij", x, x)
        big_a = np.einsum("n,nij->ij", a, outer)
        big_b = np.einsum("n,nij->ij", np.maximum(b - self.sigma**2 * a**2 / delta**2, 0), outer)
        cells: dict[str, np.ndarray] = {}
        for xi, ai, di, ci in zip(x, a, delta, self.cell, strict=True):
            cells[ci] = cells.get(ci, np.zeros(len(xi))) + ai * xi / di
        return threshold, big_a, big_b, cells

    def variance(self) -> float:
        """Var(log delta-hat at the target); inf while the design cannot identify it."""
        if len(self.x) < len(self.c):
            return float("inf")
        _, big_a, big_b, cells = self._sums()
        if np.linalg.cond(big_a) > 1e12:
            return float("inf")
        p = len(self.c)
        meat = big_b + self.sigma**2 * sum(
            (np.outer(t, t) for t in cells.values()), np.zeros((p, p))
        )
        ainv_c = np.linalg.solve(big_a, self.c)
        return float(ainv_c @ meat @ ainv_c)

    def variance_with(self, xs: np.ndarray, deltas: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Var after adding each candidate alone (vectorised over candidates)."""
        out = np.full(len(xs), np.inf)
        if len(self.x) < len(self.c) - 1 or not len(xs):
            return out
        threshold, big_a, big_b, sums = self._sums()
        a, b = self._huber(deltas, threshold)
        outer = np.einsum("ji,jk->jik", xs, xs)
        new_a = big_a + a[:, None, None] * outer
        p = len(self.c)
        old = np.stack([sums.get(c, np.zeros(p)) for c in cells])
        new = old + a[:, None] * xs / deltas[:, None]
        cell_meat = self.sigma**2 * sum((np.outer(t, t) for t in sums.values()), np.zeros((p, p)))
        meat = (
            big_b
            + cell_meat
            + np.maximum(b - self.sigma**2 * a**2 / deltas**2, 0)[:, None, None] * outer
            + self.sigma**2
            * (np.einsum("ji,jk->jik", new, new) - np.einsum("ji,jk->jik", old, old))
        )
        ok = np.linalg.cond(new_a) < 1e12
        if ok.any():
            rhs = np.broadcast_to(self.c, (int(ok.sum()), p))[..., None]
            ainv_c = np.linalg.solve(new_a[ok], rhs)[..., 0]
            out[ok] = np.einsum("ji,jik,jk->j", ainv_c, meat[ok], ainv_c)
        return out


def rel_width(variance: float | np.ndarray) -> np.ndarray:
    """Width of the 95% interval of delta relative to delta, from Var(log delta-hat)."""
    sd = np.sqrt(variance)
    return np.exp(Z95 * sd) - np.exp(-Z95 * sd)
