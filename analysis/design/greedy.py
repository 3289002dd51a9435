"""The greedy batch of `qat-sweep suggest`: each step takes the candidate (or new twin cell)
with the largest drop in the summed target variance (criterion.py) per GPU-hour, its BF16
twin's cost included when the twin is not done or chosen yet, until K runs or the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.criterion import Runs, TargetState, cell_keys, rel_width


@dataclass
class Choice:
    """The greedy batch: candidate rows in order, each with its cost and expected gain."""

    order: list[int]
    twins: list[int | None]
    cost: list[float]
    width_before: list[float]
    width_after: list[float]
    start_width: float
    target_widths: list[tuple[float, float]]  # per target: before, after the batch


def _total_with(states, targets, runs, candidates, rows) -> float:
    """Summed target variance if `rows` of the candidates were added together."""
    total = 0.0
    for t, state in states.items():
        key = targets[t].fit_key
        trial = TargetState(
            state.c, state.sigma, list(state.x), list(state.delta), list(state.cell)
        )
        for i in rows:
            if candidates["fit_key"].iat[i] == key:
                trial.add(runs[key].x[i], runs[key].delta[i], runs[key].cell[i])
        total += trial.variance()
    return total


def _total_after_each(states, targets, runs, candidates) -> np.ndarray:
    """Summed target variance after adding each candidate alone."""
    after = np.zeros(len(candidates))
    for t, state in states.items():
        mine = (candidates["fit_key"] == targets[t].fit_key).to_numpy()
        r = runs[targets[t].fit_key]
        var = np.full(len(candidates), state.variance())
        var[mine] = state.variance_with(r.x[mine], r.delta[mine], r.cell[mine])
        after += var
    return after


def choose(
    laws: dict[str, dict[str, float]],
    done: pd.DataFrame,
    candidates: pd.DataFrame,
    targets: list[sim.Target],
    sigma: float,
    k: int | None = None,
    budget: float | None = None,
    done_cells: set[str] | None = None,
    eligible: np.ndarray | None = None,
) -> Choice:
    """Greedy c-optimal batch of `eligible` QAT rows of `candidates` (columns gpu_hours and
    twin, the row of the run's BF16 twin); `done_cells` are cells whose twin costs nothing.

    Each step weighs single runs against whole new cells (every open run of one (N, D, LR)
    cell with its twin): one run alone rarely pays for a twin that several would share.
    """
    states: dict[int, TargetState] = {}
    runs: dict[str, Runs] = {}
    for t, target in enumerate(targets):
        law = laws[target.fit_key]
        states[t] = TargetState.at_target(target, law, done, sigma)
        runs[target.fit_key] = Runs.of(candidates, law)
    ready = set(done_cells or ())  # BF16 twin cells already done or chosen
    cell_of = cell_keys(candidates)
    hours = candidates["gpu_hours"].to_numpy()
    twin_hours = hours[np.maximum(candidates["twin"].to_numpy(), 0)]
    quant = (candidates["scheme"] != "bf16").to_numpy() & (candidates["twin"] >= 0).to_numpy()
    if eligible is not None:
        quant &= eligible
    total = lambda: sum(s.variance() for s in states.values())  # noqa: E731
    first = [float(rel_width(s.variance())) for s in states.values()]
    out = Choice([], [], [], [], [], float(rel_width(total())), [])
    left = budget if budget is not None else np.inf
    chosen = np.zeros(len(candidates), bool)
    while (k is None or len(out.order) < k) and left > 0:
        new_cell = np.array([c not in ready for c in cell_of])
        cost = hours + np.where(new_cell, twin_hours, 0.0)
        before = total()
        after = _total_after_each(states, targets, runs, candidates)
        gain = before - after
        if not np.isfinite(before):  # not yet identified: any run that identifies it wins
            gain = np.where(np.isfinite(after), 1.0, 0.0)
        open_ = quant & ~chosen
        score = np.where(open_ & (cost <= left) & (gain > 0), gain / cost, -np.inf)
        pick, best = [int(np.argmax(score))], float(np.max(score))
        room = np.inf if k is None else k - len(out.order)
        for cell in {cell_of[i] for i in np.flatnonzero(open_ & new_cell)}:
            rows = np.flatnonzero(open_ & (cell_of == cell))
            rows = rows[np.argsort(-np.where(np.isfinite(score[rows]), score[rows], -1e300))]
            rows = rows[: int(min(room, len(rows)))]
            while len(rows) > 1 and hours[rows].sum() + twin_hours[rows[0]] > left:
                rows = rows[:-1]
            if len(rows) < 2 or not np.isfinite(before):
                continue
            cell_gain = before - _total_with(states, targets, runs, candidates, rows)
            cell_score = cell_gain / (hours[rows].sum() + twin_hours[rows[0]])
            if cell_gain > 0 and cell_score > best:
                pick, best = [int(i) for i in rows], cell_score
        if not np.isfinite(best):
            break
        for i in pick:
            width_before = float(rel_width(total()))
            for t, state in states.items():
                key = targets[t].fit_key
                if key == candidates["fit_key"].iat[i]:
                    state.add(runs[key].x[i], runs[key].delta[i], runs[key].cell[i])
            twin_new = cell_of[i] not in ready
            out.twins.append(int(candidates["twin"].iat[i]) if twin_new else None)
            ready.add(cell_of[i])
            chosen[i] = True
            out.order.append(i)
            out.cost.append(float(hours[i] + (twin_hours[i] if twin_new else 0.0)))
            out.width_before.append(width_before)
            out.width_after.append(float(rel_width(total())))
            left -= out.cost[-1]
    last = [float(rel_width(s.variance())) for s in states.values()]
    out.target_widths = list(zip(first, last, strict=True))
    return out
