"""`qat-sweep suggest --off-grid`: candidate runs off the sweep's grid, around each target.

A sweep's grid is what someone chose before any fit; the runs that would pin a target down may
lie between the grid's largest model and the target, or at token counts the grid never tried.
For each target the candidates are its setting at the model presets from the grid's smallest
N up to the target's N (the nearest MAX_MODELS to the target), each at the grid's tokens per
parameter and the target's own, and at the grid's group sizes plus the target's. Each takes
every other setting (learning rate, data, schedule) from the grid run of that setting nearest
in N, and is planned as `plan` would plan it, so its cost is the plan's GPU-hours and a run
that does not validate is left out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.design import simulate as sim

from qat_sweep.common import write_atomic

MAX_MODELS = 4  # model presets per target: the candidate set stays a few hundred runs
PLACED = ("model", "tokens", "quant.group_size", "subgrid", "holdout", "sweep_name")


def _presets() -> dict[str, tuple[float, int]]:
    from qat_sweep.model.presets import available_presets, load_preset

    return {
        name: (float(cfg.n_params), int(cfg.hidden_size))
        for name in available_presets()
        for cfg in [load_preset(name)]
    }


def _models(target: sim.Target, mine: pd.DataFrame) -> list[str]:
    """Presets from the grid's smallest N to the target's, the MAX_MODELS nearest the target."""
    presets = _presets()
    lo = float(mine["n_params"].min())
    inside = [m for m, (n, _) in presets.items() if lo * 0.99 <= n <= target.n_params * 1.01]
    near = sorted(inside, key=lambda m: abs(np.log(presets[m][0] / target.n_params)))
    return sorted(near[:MAX_MODELS], key=lambda m: presets[m][0])


def _axes(template: pd.Series, shared: list[str]) -> dict[str, str]:
    """The template run's own overrides, less its place in the grid."""
    axes = {}
    for override in template["overrides"]:
        key, _, value = override.partition("=")
        if key not in PLACED and override not in shared:
            axes[key] = value
    return axes


def _tokens(n_params: float, ratios: list[float]) -> list[int]:
    """Token counts at these tokens per parameter, to two significant digits."""
    return sorted({int(float(f"{n_params * r:.2g}")) for r in ratios})


def _groups(target: sim.Target, mine: pd.DataFrame, hidden: int) -> list[Any]:
    """The grid's group sizes of the setting and the target's that fit this model's width."""
    groups = {*mine["group_size"].dropna().tolist(), target.group_size}
    ints = sorted(int(g) for g in groups if str(g) != "channel" and hidden % int(g) == 0)
    return [*ints, *(["channel"] if "channel" in map(str, groups) else [])]


def subgrids(spec: Any, grid: pd.DataFrame, targets: list[sim.Target]) -> dict[str, dict]:
    """The candidate sub-grids around every target, one per (target setting, model)."""
    presets = _presets()
    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        mine = grid[(grid["fit_key"] == target.fit_key) & (grid["scheme"] != "bf16")]
        if mine.empty:
            continue  # no run of this setting to copy its other settings from
        ratios = sorted(
            {*np.round(mine["tokens"] / mine["n_params"], 1), target.tokens / target.n_params}
        )
        for model in _models(target, mine):
            n, hidden = presets[model]
            template = mine.iloc[int(np.argmin(np.abs(np.log(mine["n_params"] / n))))]
            out[f"around_{target.fit_key.replace('/', '_')}_{model}"] = {
                **_axes(template, spec.overrides),
                "model": model,
                "tokens": _tokens(n, ratios),
                "quant.group_size": _groups(target, mine, hidden),
            }
    return out


def off_grid_runs(
    spec: Any,
    grid: pd.DataFrame,
    targets: list[sim.Target],
    overrides: list[str],
    mfu: float,
    peak_tflops: float,
) -> tuple[pd.DataFrame, list[str]]:
    """Planned candidate runs around the targets that the grid does not hold (BF16 twins
    included), and a note per sub-grid that did not validate."""
    notes: list[str] = []
    frames = []
    with tempfile.TemporaryDirectory(prefix="qat-sweep-around-") as tmp:
        for name, axes in subgrids(spec, grid, targets).items():
            # one file per model: a model whose runs do not validate is left out alone
            body = {"name": spec.name, "overrides": list(spec.overrides), "twins": True,
                    "subgrids": {name: axes}}  # fmt: skip
            path = Path(tmp) / name / f"{spec.name}.yaml"
            path.parent.mkdir()
            write_atomic(path, yaml.safe_dump(body, sort_keys=False))
            try:
                frames.append(sim.grid_runs(str(path), overrides, mfu, peak_tflops))
            except InputError as err:
                notes.append(f"{name} left out: {str(err).splitlines()[0]}")
    if not frames:
        return grid.iloc[:0], notes
    runs = pd.concat(frames, ignore_index=True).drop_duplicates("run_key")
    return runs[~runs["run_key"].isin(grid["run_key"])].reset_index(drop=True), notes
