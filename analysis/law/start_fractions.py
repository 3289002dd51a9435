"""Which law holds across QAT start fractions.

The settings of one scheme/format and schedule that differ only in when QAT starts
(``w4a4/int4``, ``w4a4/int4-from0.5``, ...) each get their own delta fit. Here they are pooled
and two laws compete on the pooled runs, with the held-out criteria and selection rule of every
setting (compare.py) plus leave_one_start_fraction_out:

* ``paper``: the paper's law, blind to the start fraction: the hypothesis that when QAT starts
  does not change delta at a given (N, D, G). It is the incumbent, as everywhere.
* ``D_fp_qat``: Dremov et al. 2025's form in BF16 tokens D_fp = f D and QAT tokens
  D_qat = (1 - f) D (formulas.D_FP_QAT), which predicts delta at a start fraction it was not
  fitted on.

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
from qat_sweep.analysis.law.formulas import START_FRACTION_LAWS, get_law
from qat_sweep.analysis.law.law_fit import fit_law

FROM_SUFFIX = re.compile(r"-from[0-9.eE+-]+$")


def pooled_key(fit_key: str) -> str:
    """The setting a fit key belongs to whatever its start fraction: w4a4/int4-from0.5 ->
    w4a4/int4 (collect.setting_suffix puts -from<f> last)."""
    return FROM_SUFFIX.sub("", fit_key)


def start_fraction_groups(quant: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pooled runs of every setting trained at two start fractions or more."""
    if quant.empty or "start_fraction" not in quant:
        return {}
    keys = quant["fit_key"].map(pooled_key)
    out = {}
    for key, rows in quant.groupby(keys, sort=True):
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
        out[key] = {
            "settings": sorted(rows["fit_key"].unique().tolist()),
            "start_fractions": [float(f) for f in np.unique(rows["start_fraction"])],
            "n_runs": len(rows),
            "law": selection["law"],
            "selection": selection,
            "laws": {name: law_entry(name, fits[name], entries) for name in START_FRACTION_LAWS},
        }
    return out
