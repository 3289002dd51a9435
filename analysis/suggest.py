"""`qat-sweep suggest`: the next runs that most shrink a target's predicted interval per GPU-hour.

Criterion (c-optimal, linearised at the fitted law): the variance of log delta-hat at each
target under the estimator `fit` uses, Huber regression in log space, as the M-estimator
sandwich c' A^-1 B A^-1 c (TargetState), with the delta method for each run's gap noise and the
covariance between runs that share one BF16 twin. Runs are chosen greedily, each step taking the candidate with the largest drop
in the summed target variance per GPU-hour (its BF16 twin's cost included when the twin is not
done or chosen yet), until K runs or the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import identify
from qat_sweep.analysis import simulate as sim
from qat_sweep.analysis.cells import cell_values, snap
from qat_sweep.analysis.collect import InputError, twin_index
from qat_sweep.analysis.design import noise_level, split_cli
from qat_sweep.analysis.laws import DELTA_PARAMS, delta_loss, delta_regressors
from scipy.special import ndtri

from qat_sweep.common import json_safe, write_atomic

Z95 = 1.959964
NORMAL_QUANTILES = ndtri((np.arange(256) + 0.5) / 256)  # a run's gap noise, in SDs
WHAT = {"gamma_N": "n_params", "gamma_D": "tokens", "gamma_G": "G"}
FEATURE_OF = {"gamma_D": 0, "gamma_G": 1, "gamma_N": 2}  # column of features()[:, 1:]


def features(n, d, g) -> np.ndarray:
    """Rows [1, log D, log log2 G, -log N]: the delta law is linear in these (log space)."""
    r = delta_regressors(*(np.atleast_1d(np.asarray(v, float)) for v in (n, d, g)))
    return np.column_stack([np.ones_like(r["gamma_N"]), r["gamma_D"], r["gamma_G"], r["gamma_N"]])


@dataclass
class Runs:
    """Design rows of one setting: features, predicted delta, twin cell id."""

    x: np.ndarray
    delta: np.ndarray
    cell: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, law: dict[str, float]) -> Runs:
        n, d, g = frame["n_params"], frame["tokens"], frame["G"]
        return cls(features(n, d, g), delta_loss(law, n, d, g), cell_keys(frame))


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
            cells[ci] = cells.get(ci, np.zeros(4)) + ai * xi / di
        return threshold, big_a, big_b, cells

    def variance(self) -> float:
        """Var(log delta-hat at the target); inf while the design cannot identify it."""
        if len(self.x) < 4:
            return float("inf")
        _, big_a, big_b, cells = self._sums()
        if np.linalg.cond(big_a) > 1e12:
            return float("inf")
        meat = big_b + self.sigma**2 * sum(
            (np.outer(t, t) for t in cells.values()), np.zeros((4, 4))
        )
        ainv_c = np.linalg.solve(big_a, self.c)
        return float(ainv_c @ meat @ ainv_c)

    def variance_with(self, xs: np.ndarray, deltas: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Var after adding each candidate alone (vectorised over candidates)."""
        out = np.full(len(xs), np.inf)
        if len(self.x) < 3 or not len(xs):
            return out
        threshold, big_a, big_b, sums = self._sums()
        a, b = self._huber(deltas, threshold)
        outer = np.einsum("ji,jk->jik", xs, xs)
        new_a = big_a + a[:, None, None] * outer
        old = np.stack([sums.get(c, np.zeros(4)) for c in cells])
        new = old + a[:, None] * xs / deltas[:, None]
        cell_meat = self.sigma**2 * sum((np.outer(t, t) for t in sums.values()), np.zeros((4, 4)))
        meat = (
            big_b
            + cell_meat
            + np.maximum(b - self.sigma**2 * a**2 / deltas**2, 0)[:, None, None] * outer
            + self.sigma**2
            * (np.einsum("ji,jk->jik", new, new) - np.einsum("ji,jk->jik", old, old))
        )
        ok = np.linalg.cond(new_a) < 1e12
        if ok.any():
            rhs = np.broadcast_to(self.c, (int(ok.sum()), 4))[..., None]
            ainv_c = np.linalg.solve(new_a[ok], rhs)[..., 0]
            out[ok] = np.einsum("ji,jik,jk->j", ainv_c, meat[ok], ainv_c)
        return out


def rel_width(variance: float | np.ndarray) -> np.ndarray:
    """Width of the 95% interval of delta relative to delta, from Var(log delta-hat)."""
    sd = np.sqrt(variance)
    return np.exp(Z95 * sd) - np.exp(-Z95 * sd)


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
        mine = done[done["fit_key"] == target.fit_key]
        c = features(target.n_params, target.tokens, target.G)[0]
        states[t] = TargetState.start(c, Runs.of(mine, law), sigma)
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
        after = np.zeros(len(candidates))
        for t, state in states.items():
            mine = (candidates["fit_key"] == targets[t].fit_key).to_numpy()
            r = runs[targets[t].fit_key]
            var = np.full(len(candidates), state.variance())
            var[mine] = state.variance_with(r.x[mine], r.delta[mine], r.cell[mine])
            after += var
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


# ---------------------------------------------------------------- the command


def fitted_laws(
    result: dict[str, Any], targets: list[sim.Target], done: pd.DataFrame, grid: pd.DataFrame
) -> dict[str, dict[str, float]]:
    """Delta laws of the targets' settings; InputError naming the runs that would identify them."""
    laws = {}
    for target in targets:
        fit = result["delta"].get(target.fit_key)
        if fit is None:
            raise InputError(
                f"target {target.label}: the fit has no delta law for {target.fit_key}; "
                f"fitted: {', '.join(result['delta']) or 'none'}"
            )
        missing = [p for p in DELTA_PARAMS if fit["params"].get(p) is None]
        if missing:
            raise InputError(_identify_message(target, fit, missing, done, grid))
        laws[target.fit_key] = {p: float(fit["params"][p]) for p in DELTA_PARAMS}
    return laws


def _identify_message(target, fit, missing, done, grid) -> str:
    """Why fit left the exponents out (identify.py's report) and which open runs of this sweep
    give their regressor variation of its own, cheapest first."""
    report = (fit.get("identifiability") or {}).get("exponents", {})
    mine = grid[(grid["fit_key"] == target.fit_key) & grid["open"]]
    have = done[done["fit_key"] == target.fit_key]
    lines = [
        f"target {target.label}: {', '.join(missing)} of {target.fit_key} not identifiable in "
        "this fit, so there is no interval to shrink yet."
    ]
    base = features(have["n_params"], have["tokens"], have["G"])[:, 1:]
    extra = features(mine["n_params"], mine["tokens"], mine["G"])[:, 1:]
    for name in missing:
        entry = report.get(name, {})
        j = FEATURE_OF[name]
        now = identify.independent_variation(base, j)[0] if len(base) > 1 else 0.0
        gain = np.array(
            [identify.independent_variation(np.vstack([base, row]), j)[0] for row in extra]
        )
        useful = mine[gain > now + 1e-9] if len(mine) else mine
        column = WHAT[name]
        values = ", ".join(f"{v:.4g}" for v in sorted(useful[column].unique())[:6])
        keys = useful.sort_values("gpu_hours")["run_key"].head(3).tolist()
        lines.append(
            f"  {name}: {entry.get('why', 'left out of the fit')}. "
            f"{identify.separate_by(name) or f'Runs at another {column} would separate it'}; "
            f"this sweep has {len(useful)} such runs not done ({column} = {values or 'none'})"
            + (f"; cheapest: {', '.join(keys)}" if keys else "")
        )
    lines.append("run some of them, fit again, then suggest")
    return "\n".join(lines)


def done_table(fit_dir: Path, grid: pd.DataFrame) -> pd.DataFrame:
    """Runs whose information is in hand: the fit's usable rows plus completed/running plan rows.

    Gives `grid` and the result N_cell/D_cell columns snapped together."""
    path = fit_dir / "runs.csv"
    if not path.is_file():
        raise InputError(f"no runs.csv in {fit_dir}; run `qat-sweep fit` first")
    table = pd.read_csv(path, dtype={"group_size": str})
    table = table[table["excluded"].isna() & ~table["holdout"].astype(bool)]  # '' reads as NaN
    table = table.assign(fit_key=table["scheme"] + "/" + table["format"])
    cols = ["run_key", "n_params", "tokens", "G", "lr", "seed", "scheme", "fit_key"]
    busy = grid["status"].isin(["completed", "running"]) & ~grid["run_key"].isin(table["run_key"])
    done = pd.concat([table[cols], grid.loc[busy, cols]], ignore_index=True)
    # one set of (N, D) cells for the fit's records and the plan, so twins match across both
    both = pd.concat([grid[["n_params", "tokens"]], done[["n_params", "tokens"]]])
    n_cell, d_cell = snap(both["n_params"]), snap(both["tokens"])
    grid["N_cell"], grid["D_cell"] = n_cell[: len(grid)], d_cell[: len(grid)]
    done["N_cell"], done["D_cell"] = n_cell[len(grid) :], d_cell[len(grid) :]
    return done


def sweep_file(spec: Any, rows: list[dict[str, Any]], extra: list[str]) -> dict[str, Any]:
    """A sweep file holding exactly `rows`, one sub-grid each, named like the original sweep so
    its runs land in the same run directories (and `fit sweep=NAME` sees them)."""
    shared = [*spec.overrides, *extra]
    subgrids = {}
    for i, row in enumerate(rows):
        axes = {}
        for override in row["overrides"]:
            key, _, value = override.partition("=")
            if key != "sweep_name" and override not in shared:
                axes[key] = value
        subgrids[f"next{i:02d}"] = axes
    return {"name": spec.name, "overrides": shared, "twins": True, "subgrids": subgrids}


PLAN_COLUMNS = (
    "run_key", "model", "n_params", "tokens", "scheme", "format", "group_size", "lr", "seed",
    "status", "overrides", "subgrid", "gpu_hours",
)  # fmt: skip


def _row(grid: pd.DataFrame, i: int) -> dict[str, Any]:
    row = {c: grid[c].iat[i] for c in PLAN_COLUMNS}
    row["group_size"] = None if row["scheme"] == "bf16" else row["group_size"]
    return json_safe(row)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qat-sweep suggest",
        description="The next runs that most shrink the targets' predicted intervals per "
        "GPU-hour: suggest --fit DIR sweep=NAME --target '...' [--k K] [--budget GPU_HOURS]",
    )
    p.add_argument("--fit", type=Path, required=True, help="a `qat-sweep fit` output directory")
    p.add_argument("--target", action="append", required=True,
                   help="'model=973M tokens=200B scheme=w4a4 format=int4 group_size=128'")  # fmt: skip
    p.add_argument("--k", type=int, help="how many runs (default 10 without --budget)")
    p.add_argument("--budget", type=float, help="GPU-hours to spend, BF16 twins included")
    p.add_argument("--noise", type=float, help="SD of a run's final loss (default: from the fit)")
    p.add_argument(
        "--out", type=Path, help="sweep file directory (default reports/<sweep>/suggest)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def suggest(argv: list[str]) -> dict[str, Any]:
    """Choose the runs and write the sweep file; InputError on bad input."""
    import yaml
    from qat_sweep.analysis.predict import SavedFit

    from qat_sweep.grid import PlanError, load_sweep

    args, extra = _parser().parse_known_args(argv)
    sweep, mfu, peak, overrides = split_cli(extra, "suggest")
    if args.k is not None and args.k < 1:
        raise InputError(f"--k {args.k}: need at least 1")
    if args.budget is not None and args.budget <= 0:
        raise InputError(f"--budget {args.budget}: need a positive number of GPU-hours")
    targets = [sim.parse_target(t) for t in args.target]
    saved = SavedFit.load(args.fit)
    noise = noise_level(args.noise, sim.fit_noise(saved.result))
    grid = sim.grid_runs(sweep, overrides, mfu, peak)
    done = done_table(args.fit, grid)
    grid["twin"] = twin_index(grid)
    grid["open"] = (
        grid["status"].isin(["missing", "failed"])
        & ~grid["holdout"]
        & ~grid["run_key"].isin(done["run_key"])
    )
    wanted = sorted({t.fit_key for t in targets})
    if not (grid["open"] & grid["fit_key"].isin(wanted)).any():
        raise InputError(
            f"sweep {sweep} has no remaining runs of {', '.join(wanted)}: all "
            f"{int(grid['fit_key'].isin(wanted).sum())} are done, running or held out"
        )
    laws = fitted_laws(saved.result, targets, done, grid)
    ready = set(cell_keys(done[done["scheme"] == "bf16"])) | set(
        cell_keys(grid[(grid["scheme"] == "bf16") & ~grid["open"]])
    )
    k = args.k if args.k is not None or args.budget is not None else 10
    pick = choose(laws, done, grid, targets, noise, k, args.budget, ready, grid["open"].to_numpy())
    if not pick.order:
        raise InputError(
            "no remaining run shrinks the targets' intervals"
            + (f" within {args.budget:g} GPU-hours" if args.budget else "")
        )
    rows = []
    for i, twin in zip(pick.order, pick.twins, strict=True):
        rows.append({**_row(grid, i), "twin_key": grid["run_key"].iat[int(grid["twin"].iat[i])]})
        if twin is not None:
            rows.append({**_row(grid, twin), "twin_of": grid["run_key"].iat[i]})
    for row, before, after, cost in zip(
        [r for r in rows if "twin_of" not in r],
        pick.width_before,
        pick.width_after,
        pick.cost,
        strict=True,
    ):
        row["expected_gain"] = {
            "rel_width_before": before, "rel_width_after": after,
            "gpu_hours_with_twin": cost, "gain_per_gpu_hour": (before - after) / cost,
        }  # fmt: skip
    try:
        spec = load_sweep(sweep)
    except PlanError as err:
        raise InputError(str(err)) from err
    out = args.out or Path("reports") / spec.name / "suggest"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{spec.name}.yaml"
    write_atomic(path, yaml.safe_dump(sweep_file(spec, rows, overrides), sort_keys=False))
    return {
        "sweep": sweep,
        "fit": str(args.fit),
        "criterion": "c-optimal: linearised Var(log delta-hat) at the targets of fit's Huber "
        "regression in log space (M-estimator sandwich, shared BF16 twins), greedy per GPU-hour",
        "noise": noise,
        "targets": [
            {"target": t.label, "rel_width_now": b, "rel_width_after": a}
            for t, (b, a) in zip(targets, pick.target_widths, strict=True)
        ],
        "runs": rows,
        "gpu_hours": float(sum(pick.cost)),
        "sweep_file": str(path),
        "launch": f"qat-sweep launch sweep={path} launcher=PROFILE",
    }


def format_suggestion(res: dict[str, Any]) -> str:
    lines = [f"criterion: {res['criterion']}; loss noise {res['noise']:.3g} per run"]
    for t in res["targets"]:
        lines.append(
            f"target {t['target']}: expected 95% interval width of delta now "
            f"{100 * t['rel_width_now']:.1f}% of delta, after these runs {100 * t['rel_width_after']:.1f}%"
        )
    lines += ["", f"{'run_key':<58} {'N':>7} {'D':>6} {'scheme':<10} {'G':>7} {'GPU-h':>8} "
              f"{'width after':>11} {'gain/GPU-h':>10}"]  # fmt: skip
    for r in res["runs"]:
        gain = r.get("expected_gain")
        tail = (
            f"{100 * gain['rel_width_after']:>10.1f}% {100 * gain['gain_per_gpu_hour']:>9.3g}%"
            if gain
            else f"{'(BF16 twin)':>22}"
        )
        lines.append(
            f"{r['run_key']:<58} {r['n_params'] / 1e6:>6.0f}M {r['tokens'] / 1e9:>5.0f}B "
            f"{r['scheme']:<10} {r['group_size'] or '-'!s:>7} {r['gpu_hours']:>8,.0f} {tail}"
        )
    lines += [
        "",
        f"total {len(res['runs'])} runs, {res['gpu_hours']:,.0f} GPU-hours; sweep file: {res['sweep_file']}",
        f"launch them: {res['launch']}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`qat-sweep suggest`; returns the exit code."""
    try:
        res = suggest(argv)
    except InputError as err:
        print(f"qat-sweep suggest: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if "--json" in argv else format_suggestion(res))
    return 0
