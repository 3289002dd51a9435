"""`qat-sweep suggest`: the next runs that most shrink a target's predicted interval per GPU-hour.

The criterion (c-optimal, the linearised variance of each target's log delta-hat) is in
criterion.py, the greedy choice of the batch in greedy.py; this module reads the fit and the
sweep, and writes the sweep file of the chosen runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import snap
from qat_sweep.analysis.collect import InputError, twin_index
from qat_sweep.analysis.design import around
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.design.criterion import cell_keys, features
from qat_sweep.analysis.design.expected import noise_level
from qat_sweep.analysis.design.greedy import Choice, choose
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.law.formulas import FittedLaw, fitted_law

from qat_sweep.common import format_number, json_safe, write_atomic

WHAT = {"gamma_N": "n_params", "gamma_D": "tokens", "gamma_G": "G"}
FEATURE_OF = {"gamma_N": 0, "gamma_D": 1, "gamma_G": 2}  # column of features()[:, 1:]


# ---------------------------------------------------------------- the command


def fitted_laws(
    result: dict[str, Any],
    targets: list[sim.Target],
    done: pd.DataFrame,
    grid: pd.DataFrame,
    law: str | None = None,
) -> tuple[dict[str, FittedLaw], list[str]]:
    """Delta laws of the targets' settings (each setting's selected law, or `law`), and notes.

    An exponent the grid varies on its own but the runs' noise leaves loose (identify.py) is
    taken as 0: the paper's law is linear in it, so the criterion's variance does not depend
    on its value, and it counts that exponent's own uncertainty. One the grid cannot separate
    is an InputError naming the runs that would."""
    laws, notes = {}, []
    base = result["base"]["params"]
    base = {"A": base["A"], "alpha": base["alpha"]} if base.get("A") is not None else None
    for target in targets:
        fit = result["delta"].get(target.fit_key)
        if fit is None:
            raise InputError(
                f"target {target.label}: the fit has no delta law for {target.fit_key}; "
                f"fitted: {', '.join(result['delta']) or 'none'}"
            )
        try:
            chosen = fitted_law(fit, base, law)
        except KeyError as err:
            raise InputError(f"target {target.label}: {err.args[0]}") from err
        missing = [p for p, v in chosen.params.items() if v is None]
        report = (fit.get("identifiability") or {}).get("exponents", {})
        loose = [p for p in missing if p in FEATURE_OF and _loose(report.get(p, {}))]
        if missing and (loose != missing or chosen.law.name != "paper"):
            raise InputError(_identify_message(target, fit, missing, done, grid))
        if loose:
            notes.append(
                f"{', '.join(loose)} of {target.fit_key}: not identifiable in this fit (the "
                "grid varies them, the noise leaves them loose); taken as 0 in the criterion, "
                "which counts their uncertainty: the runs below shrink it too"
            )
        laws[target.fit_key] = FittedLaw(
            chosen.law, {p: float(v or 0.0) for p, v in chosen.params.items()}, base
        )
    return laws, notes


def _loose(entry: dict[str, Any]) -> bool:
    """identify.py left the exponent out for its standard error, not for collinearity."""
    return entry.get("independent_variation", 0.0) >= identify.V_MIN and not entry.get(
        "fixed_by_format"
    )


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
        if name not in FEATURE_OF:
            lines.append(f"  {name}: {entry.get('why', 'left out of the fit')}")
            continue
        j = FEATURE_OF[name]
        if _loose(entry):  # the grid varies it: runs beyond its range would pin it down
            span = base[:, j] if len(base) else np.zeros(1)
            useful = mine[(extra[:, j] < span.min() - 1e-9) | (extra[:, j] > span.max() + 1e-9)]
        else:
            now = identify.independent_variation(base, j)[0] if len(base) > 1 else 0.0
            gain = np.array(
                [identify.independent_variation(np.vstack([base, row]), j)[0] for row in extra]
            )
            useful = mine[gain > now + 1e-9] if len(mine) else mine
        column = WHAT[name]
        values = ", ".join(format_number(v) for v in sorted(useful[column].unique())[:6])
        keys = useful.sort_values("gpu_hours")["run_key"].head(3).tolist()
        lines.append(
            f"  {name}: {entry.get('why', 'left out of the fit')}. "
            f"{identify.remedy(name, entry) if entry else f'Runs at another {column} would separate it'}; "
            f"{len(useful)} such runs not done ({column} = {values or 'none'})"
            + (f"; cheapest: {', '.join(keys)}" if keys else "")
        )
    lines.append("run some of them, fit again, then suggest")
    return "\n".join(lines)


def done_table(fit_dir: Path, grid: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """Runs whose information is in hand: the fit's usable rows plus completed/running plan
    rows; and every run key the fit read (an excluded run was run: suggesting it again would
    repeat it).

    Gives `grid` and the result N_cell/D_cell columns snapped together."""
    path = fit_dir / "runs.csv"
    if not path.is_file():
        raise InputError(f"no runs.csv in {fit_dir}; run `qat-sweep fit` first")
    table = pd.read_csv(path, dtype={"group_size": str})
    recorded = set(table["run_key"].astype(str))
    table = table[table["excluded"].isna() & ~table["holdout"].astype(bool)]  # '' reads as NaN
    table = table.assign(fit_key=table["scheme"] + "/" + table["format"])
    cols = ["run_key", "n_params", "tokens", "G", "group_size", "lr", "seed", "scheme", "fit_key"]
    busy = grid["status"].isin(["completed", "running"]) & ~grid["run_key"].isin(table["run_key"])
    done = pd.concat([table[cols], grid.loc[busy, cols]], ignore_index=True)
    # one set of (N, D) cells for the fit's records and the plan, so twins match across both
    both = pd.concat([grid[["n_params", "tokens"]], done[["n_params", "tokens"]]])
    n_cell, d_cell = snap(both["n_params"]), snap(both["tokens"])
    grid["N_cell"], grid["D_cell"] = n_cell[: len(grid)], d_cell[: len(grid)]
    done["N_cell"], done["D_cell"] = n_cell[len(grid) :], d_cell[len(grid) :]
    return done, recorded


def _why_none(grid: pd.DataFrame, wanted: list[str], budget: float | None, off_grid: bool) -> str:
    """Why the greedy took nothing: the budget below the cheapest open run, or no open run
    that the targets' variance depends on."""
    mine = grid[grid["open"] & grid["fit_key"].isin(wanted)]
    cheapest = float(mine["gpu_hours"].min())
    if budget is not None and budget < cheapest:
        return (
            f"--budget {budget:g} GPU-hours is below the cheapest remaining run of "
            f"{', '.join(wanted)} ({format_number(cheapest, digits=3)} GPU-hours before its twin)"
        )
    return (
        f"none of the {len(mine)} remaining runs of {', '.join(wanted)} shrinks the targets' "
        "intervals: they repeat cells the fit already has"
        + ("" if off_grid else "; --off-grid adds candidate runs around each target")
    )


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
    "status", "overrides", "subgrid", "gpu_hours", "off_grid",
)  # fmt: skip


def _row(grid: pd.DataFrame, i: int) -> dict[str, Any]:
    row = {c: grid[c].iat[i] for c in PLAN_COLUMNS}
    row["group_size"] = None if row["scheme"] == "bf16" else row["group_size"]
    return json_safe(row)


def _chosen_rows(grid: pd.DataFrame, pick: Choice) -> list[dict[str, Any]]:
    """The chosen runs in order, each followed by its BF16 twin when that is new too."""
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
    return rows


def suggest(
    fit_dir: Path,
    sweep: str,
    targets: list[sim.Target],
    *,
    overrides: list[str],
    mfu: float,
    peak_tflops: float,
    k: int | None = None,
    budget: float | None = None,
    noise: float | None = None,
    out: Path | None = None,
    law: str | None = None,
    off_grid: bool = False,
) -> dict[str, Any]:
    """Choose the runs of `sweep` (with `off_grid`, also runs around each target that the
    grid lacks: around.py) that most shrink the targets' intervals and write them as a sweep
    file; InputError on bad input."""
    import yaml
    from qat_sweep.analysis.predict import SavedFit

    from qat_sweep.sweep.plan import PlanError, load_sweep

    saved = SavedFit.load(fit_dir)
    implied = sim.fit_noise(saved.result, fit_dir)
    noise = noise_level(noise, implied[0] if implied else None)
    try:
        spec = load_sweep(sweep)
    except PlanError as err:
        raise InputError(str(err)) from err
    grid = sim.grid_runs(sweep, overrides, mfu, peak_tflops).assign(off_grid=False)
    notes: list[str] = []
    if off_grid:
        extra, notes = around.off_grid_runs(spec, grid, targets, overrides, mfu, peak_tflops)
        grid = pd.concat([grid, extra.assign(off_grid=True)], ignore_index=True)
    done, recorded = done_table(fit_dir, grid)
    grid["twin"] = twin_index(grid)
    grid["open"] = (
        grid["status"].isin(["missing", "failed"])
        & ~grid["holdout"]
        & ~grid["run_key"].isin(done["run_key"])
        & ~grid["run_key"].isin(recorded)
    )
    wanted = sorted({t.fit_key for t in targets})
    if not (grid["open"] & grid["fit_key"].isin(wanted)).any():
        raise InputError(
            f"sweep {sweep} has no remaining runs of {', '.join(wanted)}: all "
            f"{int(grid['fit_key'].isin(wanted).sum())} are done, running, held out or in the "
            "fit already"
            + ("" if off_grid else "; --off-grid adds candidate runs around each target")
        )
    laws, law_notes = fitted_laws(saved.result, targets, done, grid, law)
    ready = set(cell_keys(done[done["scheme"] == "bf16"])) | set(
        cell_keys(grid[(grid["scheme"] == "bf16") & ~grid["open"]])
    )
    k = k if k is not None or budget is not None else 10
    pick = choose(laws, done, grid, targets, noise, k, budget, ready, grid["open"].to_numpy())
    if not pick.order:
        raise InputError(_why_none(grid, wanted, budget, off_grid))
    rows = _chosen_rows(grid, pick)
    out = out or Path("reports") / spec.name / "suggest"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{spec.name}.yaml"
    write_atomic(path, yaml.safe_dump(sweep_file(spec, rows, overrides), sort_keys=False))
    return {
        "sweep": sweep,
        "fit": str(fit_dir),
        "criterion": "c-optimal: linearised Var(log delta-hat) at the targets of fit's Huber "
        "regression in log space (M-estimator sandwich, shared BF16 twins), greedy per GPU-hour",
        "laws": {key: fl.law.name for key, fl in laws.items()},
        "law_source": "--law" if law else "selected by the fit",
        "noise": noise,
        "targets": [
            {"target": t.label, "rel_width_now": b, "rel_width_after": a}
            for t, (b, a) in zip(targets, pick.target_widths, strict=True)
        ],
        "runs": rows,
        "notes": law_notes + notes,
        "gpu_hours": float(sum(pick.cost)),
        "sweep_file": str(path),
        "launch": f"qat-sweep launch sweep={path} launcher=PROFILE",
    }
