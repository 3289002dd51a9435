"""Validation of `suggest` by simulation: does the suggest -> run -> refit loop buy the full grid's
interval for less, and beat random runs of equal cost?

A hidden truth (HIDDEN, not Table 1) generates each run's loss once, when the loop "runs" it.
From a small seed design the loop refits exactly as `fit` would (simulate.refit_many on the
runs done), asks `greedy.choose` for the next batch and runs it. Every design on the way is
scored by the expected 95% interval width of delta at the target under the truth (design's
metric: many simulated sweeps of that design, refitted), so designs are compared, not noise draws.

The loop's pieces live here (the test suite checks them); scripts/bench-suggest runs the whole
comparison: scripts/bench-suggest [--seeds 4] [--plot docs/suggest-curve.png]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from qat_sweep.analysis.collect import twin_index
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.criterion import cell_keys
from qat_sweep.analysis.design.greedy import choose
from qat_sweep.analysis.law.formulas import DELTA_PARAMS

TARGET = "model=973M tokens=200B scheme=w4a4 format=int4 group_size=128"
HIDDEN = {"k": 0.12, "gamma_N": 0.25, "gamma_D": 0.10, "gamma_G": 0.65}  # ours, hidden
SEED_DESIGN = {"model": ("74M", "145M"), "tokens": (10e9, 20e9), "group_size": ("32", "channel")}


def hidden_truth() -> sim.Prior:
    prior = sim.paper_prior()
    prior.delta["w4a4/int4"] = dict(HIDDEN)
    prior.source = "hidden synthetic truth"
    return prior


@dataclass
class Curve:
    gpu_hours: list[float] = field(default_factory=list)
    width: list[float] = field(default_factory=list)


def candidate_grid(fit_key: str = "w4a4/int4") -> pd.DataFrame:
    """The paper grid's fitted (not held-out) runs of the target's setting plus BF16."""
    grid = sim.grid_runs("paper")
    keep = ~grid["holdout"] & ((grid["fit_key"] == fit_key) | (grid["scheme"] == "bf16"))
    grid = grid[keep].reset_index(drop=True)
    grid["twin"] = twin_index(grid)
    return grid


def seed_mask(grid: pd.DataFrame) -> np.ndarray:
    """A cheap seed design: w4a4 at the two smallest N and D, finest and coarsest G, + twins."""
    quant = (
        (grid["scheme"] != "bf16")
        & grid["model"].isin(SEED_DESIGN["model"])
        & grid["tokens"].isin(SEED_DESIGN["tokens"])
        & grid["group_size"].astype(str).isin(SEED_DESIGN["group_size"])
        & np.isclose(grid["lr"], [sim_lr(m) for m in grid["model"]])
    ).to_numpy()
    mask = quant.copy()
    mask[grid["twin"].to_numpy()[quant]] = True
    return mask


def sim_lr(model: str) -> float:
    from qat_sweep.model.presets import load_preset

    return load_preset(model).lr


def expected_width(
    truth: sim.Prior,
    grid: pd.DataFrame,
    mask: np.ndarray,
    target: sim.Target,
    noise: float,
    sims: int,
) -> float:
    """Expected 95% interval width of delta at the target, relative to the true delta."""
    runs = grid[mask].reset_index(drop=True)
    # common random numbers: every design sees the same draws for the runs it shares
    losses = sim.true_losses(truth, runs) + _common_noise(len(grid), sims)[:, mask] * noise
    refits = sim.refit_many(runs, losses, sim.true_losses(truth, runs))
    est = refits.delta.get(target.fit_key)
    if est is None:
        return float("inf")
    delta = sim.predicted_delta(est, target.n_params, target.tokens, target.G)
    truth_delta = float(
        sim.delta_loss(truth.delta[target.fit_key], target.n_params, target.tokens, target.G)
    )
    lo, hi = np.nanpercentile(delta, [2.5, 97.5])
    return float((hi - lo) / truth_delta)


_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _common_noise(n_runs: int, sims: int) -> np.ndarray:
    if (n_runs, sims) not in _NOISE:
        _NOISE[(n_runs, sims)] = np.random.default_rng(12345).standard_normal((sims, n_runs))
    return _NOISE[(n_runs, sims)]


def design_cost(grid: pd.DataFrame, mask: np.ndarray) -> float:
    return float(grid.loc[mask, "gpu_hours"].sum())


def suggest_curve(
    truth, grid, target, noise, seed, batch=4, sims=100, stop_width=None, max_cost=None
) -> Curve:
    """suggest -> run (truth + noise, drawn once per run) -> refit, from the seed design."""
    rng = np.random.default_rng(seed)
    outcome = sim.true_losses(truth, grid) + rng.normal(0.0, noise, len(grid))
    done = seed_mask(grid)
    curve = Curve(
        [design_cost(grid, done)], [expected_width(truth, grid, done, target, noise, sims)]
    )
    eligible = (grid["fit_key"] == target.fit_key).to_numpy()
    while (stop_width is None or curve.width[-1] > stop_width) and (
        max_cost is None or curve.gpu_hours[-1] < max_cost
    ):
        runs = grid[done].reset_index(drop=True)
        refit = sim.refit_many(runs, outcome[done][None, :])  # exactly as `fit` on those records
        est = refit.delta[target.fit_key][0]
        law = dict(zip(DELTA_PARAMS, np.nan_to_num(est), strict=True))
        ready = set(cell_keys(grid[done & (grid["scheme"] == "bf16").to_numpy()]))
        pick = choose(
            {target.fit_key: law}, runs, grid, [target], noise, k=batch,
            done_cells=ready, eligible=eligible & ~done,
        )  # fmt: skip
        if not pick.order:
            break
        done[pick.order] = True
        done[grid["twin"].to_numpy()[pick.order]] = True
        curve.gpu_hours.append(design_cost(grid, done))
        curve.width.append(expected_width(truth, grid, done, target, noise, sims))
    return curve


def random_curve(truth, grid, target, noise, seed, costs: list[float], sims=100) -> Curve:
    """Random runs of the target's setting (+ twins) from the same seed design, at given costs."""
    rng = np.random.default_rng(1000 + seed)
    done = seed_mask(grid)
    pool = np.flatnonzero((grid["fit_key"] == target.fit_key).to_numpy() & ~done)
    order = rng.permutation(pool)
    curve = Curve()
    for budget in costs:
        mask = done.copy()
        for i in order:
            trial = mask.copy()
            trial[[i, grid["twin"].iat[i]]] = True
            if design_cost(grid, trial) > budget:
                continue  # skip what does not fit, keep filling with cheaper runs
            mask = trial
        curve.gpu_hours.append(design_cost(grid, mask))
        curve.width.append(expected_width(truth, grid, mask, target, noise, sims))
    return curve
