"""Which law holds: every candidate law's held-out errors on one setting, and the selection.

Four held-out criteria, each the paper's Table 2 metric (mean |predicted - actual| / actual of
delta) over the runs a fit on the other cells predicts:

* leave_largest_N: fit without the largest N, predict it;
* leave_largest_D: fit without the largest D, predict it;
* largest_D_per_N: fit without the (N, D) cells of largest tokens per parameter (the top
  quarter of cells, at least one), predict them;
* cell_cv: leave one (N, D) cell out at a time (10 folds of cells beyond 30 cells);
* leave_one_start_fraction_out: where settings of several QAT start fractions are pooled
  (fit.json start_fractions), fit without one start fraction, predict it; once per fraction.

Every held-out fit is the law's own estimator (law_fit.Engine: the same Huber threshold, box and
left-out exponents as the full fit; nonlinear parameters profiled over the law's grid afresh).

Selection (one-standard-error rule; the paper's law is the incumbent, then fewer parameters): a
law's held-out error is the mean Table 2 metric over all the held-out cells of the four criteria
that every fitted law predicts (each cell of each criterion once), so the laws are compared on
the same cells. The law with the lowest error is the reference; for every law the excess over
the reference is averaged over those cells with its standard error (paired: the same cells, so
the noise they share cancels). Among the laws whose excess is within one standard error, the
paper's law is selected if it is one of them (it is the hypothesis under test: another law must
beat it by more than one SE to replace it), otherwise the one with the fewest parameters (ties:
lower error, then the order of formulas.LAWS). Why the incumbent before parsimony: where a grid
barely resolves the D term (the paper grid at 0.01 per run puts gamma_D about 2-3 SE from 0),
parsimony alone drops the paper's law for no_D in most sweeps drawn from the paper's law itself,
although no_D is never better there; the paper's law contains no_D (gamma_D = 0), and whether
gamma_D is resolved is said by its interval. Two laws that predict almost alike have a tiny
paired SE, so an excess under TIE (5 %) of the reference's error also counts as within. No
criterion at all: the paper's law.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_codes, cell_values
from qat_sweep.analysis.law.formulas import KNOWN_LAWS, LAWS, get_law
from qat_sweep.analysis.law.law_fit import Engine, aicc

START_CRITERION = "leave_one_start_fraction_out"
CRITERIA = ("leave_largest_N", "leave_largest_D", "largest_D_per_N", "cell_cv", START_CRITERION)
AXIS_OF = {"leave_largest_N": "N", "leave_largest_D": "D", "largest_D_per_N": "D"}
MAX_LOCO_CELLS = 30
TIE = 0.05  # an excess under 5 % of the reference's error is a tie, however small its SE
CV_FOLDS = 10
RULE = (
    "held-out error = the mean |predicted - actual| / actual over every held-out cell of the "
    "criteria that all fitted laws predict; the law with the lowest is the reference; "
    "among the laws whose excess over it is within one standard error of that excess (paired, "
    "over the same cells; an excess under 5 % of the reference's error counts as within) the "
    "paper's law is kept if it is one of them (another law must beat it by more than one SE), "
    "otherwise the one with the fewest parameters is selected (ties: lower error)"
)


@dataclass
class Split:
    criterion: str
    train: np.ndarray  # bool per run
    test: np.ndarray


def make_splits(rows: pd.DataFrame, seed: int = 0) -> tuple[list[Split], dict[str, str]]:
    """The held-out splits of one setting's runs, and why a criterion has none."""
    n_cell, d_cell = cell_values(rows)
    codes = cell_codes(rows)
    splits: list[Split] = []
    notes: dict[str, str] = {}
    for criterion, values, what in (
        ("leave_largest_N", n_cell, "N"),
        ("leave_largest_D", d_cell, "D"),
    ):
        distinct = np.unique(values)
        if len(distinct) < 3:
            notes[criterion] = (
                f"{len(distinct)} distinct {what} values: need 3 to leave the largest out"
            )
            continue
        test = values == distinct[-1]
        splits.append(Split(criterion, ~test, test))
    n_cells = codes.max() + 1 if len(codes) else 0
    ratio = np.zeros(n_cells)
    ratio[codes] = d_cell / n_cell
    if n_cells < 4:
        notes["largest_D_per_N"] = f"{n_cells} (N, D) cells: need 4 to hold out the top quarter"
    else:
        k = max(1, round(n_cells / 4))
        threshold = np.sort(ratio)[::-1][k - 1]
        held = ratio >= threshold * (1 - 1e-9)
        if held.all():
            notes["largest_D_per_N"] = "every cell has the same D/N"
        else:
            test = held[codes]
            splits.append(Split("largest_D_per_N", ~test, test))
    if n_cells < 3:
        notes["cell_cv"] = f"{n_cells} (N, D) cells: need 3 to leave one out"
    else:
        order = np.arange(n_cells)
        if n_cells > MAX_LOCO_CELLS:
            order = np.random.default_rng(seed).permutation(n_cells) % CV_FOLDS
        for fold in np.unique(order):
            test = (order == fold)[codes]
            splits.append(Split("cell_cv", ~test, test))
    starts = np.asarray(rows["start_fraction"], float) if "start_fraction" in rows else None
    if starts is not None and len(np.unique(starts)) >= 3:
        # with two fractions, leaving one out leaves no variation in f to fit the other from
        for f in np.unique(starts):
            test = starts == f
            splits.append(Split(START_CRITERION, ~test, test))
    elif starts is not None and len(np.unique(starts)) == 2:
        notes[START_CRITERION] = "2 start fractions: need 3 to leave one out"
    return splits, notes


def _dropped_axes(engine: Engine) -> dict[str, str]:
    """Axes the kept terms cannot extrapolate along: a term of the law left out there."""
    kept = {t.param for t in engine.terms} | {p.param for p in engine.kept_nonlinear}
    every = [(t.axis, t.param) for t in engine.law.terms(engine.groups)]
    every += [(p.axis, p.param) for p in engine.law.nonlinear]
    return {axis: param for axis, param in every if axis and param not in kept}


def held_out(
    engine: Engine,
    splits: list[Split],
    notes: Mapping[str, str],
    y: np.ndarray,
    valid: np.ndarray,
    scale: np.ndarray,
    base_rows: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """Held-out errors of one law for S data sets at once (S = 1 for a fit; simulated sweeps).

    y, valid: (S, runs) log gaps and which gaps exist; scale: (S,) Huber thresholds;
    base_rows: per data set A and alpha (S, 1) for laws on the BF16 law. Returns, per criterion,
    the pooled Table 2 metric (S,), the per-cell unit errors (S, units), and notes."""
    out_notes = dict(notes)
    blocked = _dropped_axes(engine)
    usable = []
    for split in splits:
        axis = AXIS_OF.get(split.criterion)
        if axis in blocked:
            out_notes[split.criterion] = (
                f"cannot extrapolate in {axis}: {blocked[axis]} not identifiable"
            )
            continue
        usable.append(split)
    sets, runs = y.shape
    pooled: dict[str, np.ndarray] = {}
    units: dict[str, np.ndarray] = {}
    if not usable:
        return pooled, units, out_notes
    train = np.stack([s.train for s in usable]).astype(float)  # (splits, runs)
    weights = (train[None, :, :] * valid[:, None, :]).reshape(-1, runs)
    y_rows = np.repeat(np.where(valid, y, 0.0), len(usable), axis=0)
    scale_rows = np.repeat(np.asarray(scale, float), len(usable))
    base = None
    if base_rows is not None:
        base = {k: np.repeat(np.asarray(v, float).reshape(sets, 1), len(usable), axis=0)
                for k, v in base_rows.items()}  # fmt: skip
    with np.errstate(all="ignore"):
        theta = engine.fit(None, weights, scale_rows, base_rows=base, y_rows=y_rows)
        pred = engine.log_delta(theta, None, base).reshape(sets, len(usable), runs)
        err = np.abs(np.exp(pred - y[:, None, :]) - 1.0)  # |pred - actual| / actual
    codes = engine_codes(engine)
    for criterion in CRITERIA:
        mine = [i for i, s in enumerate(usable) if s.criterion == criterion]
        if not mine:
            continue
        cols, pooled_sum, pooled_n = [], np.zeros(sets), np.zeros(sets)
        for i in mine:
            test = usable[i].test
            for cell in np.unique(codes[test]):
                at = test & (codes == cell)
                ok = valid[:, at] & np.isfinite(err[:, i, at])
                e = np.where(ok, err[:, i, at], 0.0)
                cols.append(
                    np.where(ok.any(axis=1), e.sum(axis=1) / np.maximum(ok.sum(axis=1), 1), np.nan)
                )
                pooled_sum += e.sum(axis=1)
                pooled_n += ok.sum(axis=1)
        units[criterion] = np.column_stack(cols)
        pooled[criterion] = np.where(pooled_n > 0, pooled_sum / np.maximum(pooled_n, 1), np.nan)
        if np.all(np.isnan(pooled[criterion])):
            out_notes.setdefault(criterion, "the training cells cannot identify this law")
    return pooled, units, out_notes


def engine_codes(engine: Engine) -> np.ndarray:
    frame = pd.DataFrame({"n_params": engine.points.n, "tokens": engine.points.d})
    return cell_codes(frame)


def pooled(units: Mapping[str, np.ndarray], common: Mapping[str, np.ndarray]) -> np.ndarray:
    """The held-out cells every fitted law predicts, over all criteria: one error each."""
    parts = [units[c][common[c]] for c in CRITERIA if c in units and c in common]
    return np.concatenate(parts) if parts else np.zeros(0)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    if not values.size:
        return float("nan"), float("nan")
    se = float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return float(np.mean(values)), se


def select(
    units: Mapping[str, Mapping[str, np.ndarray]],
    n_params: Mapping[str, int],
    forced: str | None = None,
) -> dict[str, Any]:
    """The selection over the laws with held-out units (one data set: units are 1-D arrays)."""
    laws = [name for name in units if any(len(v) for v in units[name].values())]
    common: dict[str, np.ndarray] = {}
    for criterion in CRITERIA:
        have = [units[name][criterion] for name in laws if criterion in units[name]]
        if len(have) == len(laws) and have:
            common[criterion] = np.all([np.isfinite(v) for v in have], axis=0)
    cells = {name: pooled(units[name], common) for name in laws}
    scores = {name: mean_se(v) for name, v in cells.items()}
    scored = {name: sc for name, sc in scores.items() if np.isfinite(sc[0])}
    result: dict[str, Any] = {
        "rule": RULE,
        "scores": {n: {"held_out_error": sc[0], "se": sc[1]} for n, sc in scores.items()},
        "criteria": [c for c in CRITERIA if c in common and common[c].any()],
        "n_cells": int(sum(int(v.sum()) for v in common.values())),
        "forced": forced is not None,
    }
    order = list(KNOWN_LAWS)
    if not scored:
        result["law"] = forced or "paper"
        result["why"] = (
            f"forced with --law {forced}" if forced else
            "no held-out criterion could be computed on this grid: the paper's law is kept"
        )  # fmt: skip
        return result
    best = min(scored, key=lambda n: (scored[n][0], order.index(n)))
    tie = TIE * scored[best][0]
    within = []
    for name in scored:
        excess, se = mean_se(cells[name] - cells[best])  # paired: the same held-out cells
        result["scores"][name].update(excess=excess, excess_se=se)
        if excess <= max(se, tie) + 1e-12:
            within.append(name)
    chosen = (
        "paper"
        if "paper" in within
        else min(within, key=lambda n: (n_params[n], scored[n][0], order.index(n)))
    )
    result["reference"] = best
    if forced:
        result["law"] = forced
        result["why"] = f"forced with --law {forced}; the rule would select {chosen}"
        result["rule_selects"] = chosen
        return result
    result["law"] = chosen
    err = scored[best][0]
    n = result["n_cells"]
    if chosen == best:
        others = ", ".join(
            f"{name} {100 * sc[0]:.1f}% (+{100 * result['scores'][name]['excess']:.2f} +- "
            f"{100 * result['scores'][name]['excess_se']:.2f} points)"
            for name, sc in scored.items() if name != best
        )  # fmt: skip
        result["why"] = (
            f"lowest held-out error {100 * err:.1f}% over {n} held-out cells"
            + (f"; {others}" if others else "")
            + (
                f"; within one SE but not simpler: {', '.join(sorted(set(within) - {best}))}"
                if len(within) > 1 and chosen != "paper" else ""
            )
            + (
                f"; within one SE: {', '.join(sorted(set(within) - {best}))} (none beats the "
                "paper's law by more than one SE, so it is kept)"
                if len(within) > 1 and chosen == "paper" else ""
            )
        )  # fmt: skip
    else:
        sc = result["scores"][chosen]
        result["why"] = (
            f"{100 * sc['held_out_error']:.1f}% held-out error, {100 * sc['excess']:.2f} points "
            f"above the lowest ({best} {100 * err:.1f}%), within one standard error of that "
            f"difference ({100 * sc['excess_se']:.2f}; ties below {100 * tie:.2f}), "
            + (
                "so the paper's law is kept: no law beats it by more than one SE"
                if chosen == "paper"
                else f"with fewer parameters ({n_params[chosen]} against {n_params[best]})"
            )
        )
    return result


def compare_setting(
    rows: pd.DataFrame,
    fits: Mapping[str, Any],
    paper_scale: float,
    base_params: Mapping[str, Any] | None = None,
    forced: str | None = None,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Held-out errors of every fitted law of one setting (fits: name -> LawFit or the reason
    it was not fitted) and the selection; `forced` (--law) overrides the rule where fitted."""
    from qat_sweep.analysis.law.law_fit import base_of, engine_for

    splits, notes = make_splits(rows, seed)
    y = np.log(rows["delta"].to_numpy(float))[None, :]
    valid = np.isfinite(y)
    entries: dict[str, dict[str, Any]] = {}
    units: dict[str, dict[str, np.ndarray]] = {}
    n_params: dict[str, int] = {}
    for name, fit in fits.items():
        if isinstance(fit, str):
            continue
        engine = fit.internal.get("engine") or engine_for(
            get_law(name), rows, fit.not_identifiable, base_of(base_params)
        )
        pooled, law_units, law_notes = held_out(
            engine, splits, notes, y, valid, np.array([paper_scale])
        )
        entries[name] = {
            "held_out": {
                c: (float(pooled[c][0]) if c in pooled and np.isfinite(pooled[c][0]) else None)
                for c in CRITERIA
            },
            "held_out_notes": {c: law_notes[c] for c in CRITERIA if c in law_notes},
        }
        units[name] = {c: v[0] for c, v in law_units.items()}
        n_params[name] = engine.n_theta
    usable_force = forced if forced in units else None
    selection = select(units, n_params, usable_force)
    if forced and not usable_force:
        why = fits.get(forced) if isinstance(fits.get(forced), str) else "not fitted"
        selection["why"] = (
            f"--law {forced} not fitted for this setting ({why}); " + selection["why"]
        )
    for name, entry in entries.items():
        s = selection["scores"].get(name, {})
        entry["held_out_error"] = s.get("held_out_error")
        entry["held_out_se"] = s.get("se")
        entry["n_params"] = n_params[name]
    return entries, selection


def select_sets(
    rows: pd.DataFrame,
    y: np.ndarray,
    valid: np.ndarray,
    scale: np.ndarray,
    dropped: list[frozenset[str]],
    base_rows: Mapping[str, np.ndarray] | None = None,
    forced: str | None = None,
) -> list[str]:
    """The law the selection picks in each of S data sets on the same runs (simulated sweeps):
    y, valid (S, runs) log gaps and which exist; scale (S,) each set's Huber threshold;
    dropped: per set, the exponents identify.py leaves out of its paper law; base_rows: per
    set A and alpha (S, 1), or None when no set has a BF16 law (then eff_per_G is not fitted).

    Each law is refitted per fold exactly as fit's comparison does, batched over the sets that
    share one set of left-out exponents. A set where no held-out criterion can be computed is
    'undecided' (fit then keeps the paper's law by default)."""
    from qat_sweep.analysis.law.law_fit import engine_for

    splits, notes = make_splits(rows)
    n_cell, d_cell = cell_values(rows)
    ratios = len(set(np.round(np.log(d_cell / n_cell), 6)))
    picks: list[str] = ["paper"] * len(y)
    groups: dict[frozenset[str], list[int]] = {}
    for s, out in enumerate(dropped):
        groups.setdefault(out, []).append(s)
    for out, members in groups.items():
        idx = np.array(members)
        units: dict[str, dict[str, np.ndarray]] = {}
        n_params: dict[str, int] = {}
        for name, law in LAWS.items():
            if law.uses_base and base_rows is None:
                continue
            if law.nonlinear and ("gamma_D" in out or ratios < 3):
                continue  # law_fit.why_not_fitted: no D term to level off, or too few D/N
            base_point = None
            if law.uses_base:
                base_point = {k: float(np.nanmedian(v)) for k, v in base_rows.items()}
            engine = engine_for(law, rows, out, base_point)
            sub_base = (
                {k: np.asarray(v)[idx] for k, v in base_rows.items()} if law.uses_base else None
            )
            _, law_units, _ = held_out(
                engine, splits, notes, y[idx], valid[idx], scale[idx], sub_base
            )
            units[name] = law_units  # type: ignore[assignment]
            n_params[name] = engine.n_theta
        for j, s in enumerate(members):
            mine = {name: {c: v[j] for c, v in u.items()} for name, u in units.items()}
            chosen = select(mine, n_params, forced if forced in mine else None)
            picks[s] = chosen["law"] if "reference" in chosen else "undecided"
    return picks


def law_entry(name: str, fit: Any, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One law of one setting in fit.json: its parameters and every criterion, or why not
    (fit: a law_fit LawFit, or the reason it was not fitted)."""
    law = get_law(name)
    if isinstance(fit, str):
        return {"fitted": False, "why": fit, "formula": law.formula}
    full = fit.to_json()
    entry = entries.get(name, {})
    n_params = entry.get("n_params", sum(v is not None for v in fit.params.values()))
    return {
        "fitted": True,
        "formula": law.formula,
        "params": full["params"],
        "ci95": full["ci95"],
        "n_params": n_params,
        "in_sample": full.get("rel_error"),
        "held_out": entry.get("held_out", dict.fromkeys(CRITERIA)),
        "held_out_error": entry.get("held_out_error"),
        "held_out_se": entry.get("held_out_se"),
        "held_out_notes": entry.get("held_out_notes", {}),
        "aicc": aicc(fit.resid, n_params),
        "levels_off": law.levels_off,
        "nests": list(law.nests),
        "not_identifiable": full["not_identifiable"],
        "interval_flags": full["interval_flags"],
        "bound_hits": full["bound_hits"],
        "notes": full["notes"],
    }
