"""Which law holds across QAT start fractions.

The settings of one scheme/format and schedule that differ only in when QAT starts
(``w4a4/int4-from0.5``, ``w4a4/int4-from0.7``, ...) each get their own delta fit. Here the runs
trained in BF16 first (start fraction f > 0) are pooled and two laws compete on them, with the
held-out criteria and selection rule of every setting (compare.py) plus
leave_one_start_fraction_out:

* ``paper``: the paper's law, blind to the start fraction: the hypothesis that when QAT starts
  does not change delta at a given (N, D, G). It is the incumbent, as everywhere.
* ``D_fp_qat``: Dremov et al. 2025's form in BF16 tokens D_fp = f D and QAT tokens
  D_qat = (1 - f) D (formulas.D_FP_QAT), which predicts delta at a start fraction it was not
  fitted on. It has no value at f = 0 (no BF16 phase), so QAT from step 0 stays out of the pool.

Where D_fp_qat is selected, each (N, D, G) of the pooled runs also gets the start fraction that
minimises its delta at fixed total tokens D (the BF16 twin's loss is the same at every f, so
that is the f of the lowest quantized loss): Dremov et al.'s optimal QAT fraction 1 - f*.

Intervals are not bootstrapped here (the per-setting fits carry them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.law.compare import compare_setting, law_entry
from qat_sweep.analysis.law.delta_fit import fit_delta
from qat_sweep.analysis.law.formulas import (
    START_FRACTION_LAWS,
    FittedLaw,
    Points,
    get_law,
    group_label,
)
from qat_sweep.analysis.law.law_fit import fit_law

FROM_SUFFIX = re.compile(r"-from[0-9.eE+-]+$")
FRACTIONS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # where the best start fraction is sought


def pooled_key(fit_key: str) -> str:
    """The setting a fit key belongs to whatever its start fraction: w4a4/int4-from0.5 ->
    w4a4/int4 (collect.setting_suffix puts -from<f> last)."""
    return FROM_SUFFIX.sub("", fit_key)


def start_fraction_groups(quant: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pooled runs of every setting trained in BF16 first at two start fractions or more."""
    if quant.empty or "start_fraction" not in quant:
        return {}
    late = quant[quant["start_fraction"] > 0]
    out = {}
    for key, rows in late.groupby(late["fit_key"].map(pooled_key), sort=True):
        if rows["start_fraction"].nunique() >= 2:
            out[str(key)] = rows.reset_index(drop=True)
    return out


def compare_start_fractions(
    quant: pd.DataFrame,
    base_params: Mapping[str, Any] | None,
    f_scale: float | None,
    seed: int = 0,
) -> dict[str, Any]:
    """fit.json's ``start_fractions``: per pooled setting its start fractions, each law's fit
    and held-out errors, and the selection with its reason."""
    out: dict[str, Any] = {}
    for key, rows in start_fraction_groups(quant).items():
        paper = fit_delta(rows, key, f_scale, seed=seed)
        fits: dict[str, Any] = {"paper": paper}
        for name in START_FRACTION_LAWS[1:]:
            fits[name] = fit_law(rows, get_law(name), key, paper, base_params, seed)
        entries, selection = compare_setting(rows, fits, paper.f_scale, base_params, None, seed)
        chosen = fits[selection["law"]]
        out[key] = {
            "settings": sorted(rows["fit_key"].unique().tolist()),
            "start_fractions": [float(f) for f in np.unique(rows["start_fraction"])],
            "n_runs": len(rows),
            "law": selection["law"],
            "selection": selection,
            "laws": {name: law_entry(name, fits[name], entries) for name in START_FRACTION_LAWS},
            "best_start_fraction": (
                best_start_fractions(FittedLaw(get_law(selection["law"]), chosen.params), rows)
                if selection["law"] != "paper"
                else []
            ),
        }
    return out


def best_start_fractions(law: FittedLaw, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (N, D, G) of the rows: the start fraction in (0, 1) of the lowest predicted delta,
    that delta, and the predicted delta at the pooled runs' lowest and highest fractions."""
    out = []
    lo, hi = float(rows["start_fraction"].min()), float(rows["start_fraction"].max())
    cells = rows[["n_params", "tokens", "G", "group_size"]].drop_duplicates()
    for cell in cells.sort_values(["n_params", "tokens", "G"]).itertuples():
        at = np.append(FRACTIONS, [lo, hi])  # the search grid, then the ends that were run
        delta, ends = np.split(
            law.delta(Points.at(cell.n_params, cell.tokens, cell.G, cell.group_size, at)), [-2]
        )
        best = int(np.nanargmin(delta))
        out.append({
            "n_params": float(cell.n_params), "tokens": float(cell.tokens), "G": float(cell.G),
            "group_size": group_label(cell.group_size),
            "tokens_per_param": float(cell.tokens / cell.n_params),
            "best_start_fraction": float(FRACTIONS[best]), "delta_at_best": float(delta[best]),
            f"delta_at_{lo:g}": float(ends[0]), f"delta_at_{hi:g}": float(ends[1]),
        })  # fmt: skip
    return out
