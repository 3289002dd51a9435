"""The optional joint fit: all runs at once, started from the two-stage estimates."""

from __future__ import annotations

from typing import Any

import lmfit
import numpy as np
import pandas as pd
from qat_sweep.analysis.law.base_fit import (
    BASE_BOUNDS,
    D_UNIT,
    N_UNIT,
    LawFit,
    base_raw,
    bound_hits,
    huber_cost,
)
from qat_sweep.analysis.law.delta_fit import GAMMA_BOUND, DeltaDesign
from qat_sweep.analysis.law.formulas import BASE_PARAMS, DELTA_PARAMS, LOSS_FLOOR, bf16_loss


def _start_params(base: LawFit, deltas: dict[str, LawFit]) -> lmfit.Parameters:
    """The base law's and each tagged delta law's two-stage estimates, within the fits' bounds."""
    params = lmfit.Parameters()
    theta = base.internal["theta"]
    for i, name in enumerate(("A", "B", "E", "alpha")):
        lo, hi = BASE_BOUNDS[name]
        params.add(name, value=float(theta[i]), min=lo, max=hi)
    if base.internal["tied"]:
        params.add("beta", expr="alpha")
    else:
        params.add("beta", value=float(theta[4]), min=0.01, max=2.0)
    for tag, fit in deltas.items():
        design: DeltaDesign = fit.internal["design"]
        coef = fit.internal["coef"]
        params.add(f"{tag}_c0", value=float(coef[0]))
        for j, col in enumerate(design.columns):
            params.add(f"{tag}_{col}", value=float(coef[1 + j]), min=-GAMMA_BOUND, max=GAMMA_BOUND)
    return params


def fit_joint(
    bf16: pd.DataFrame, quant: pd.DataFrame, base: LawFit, deltas: dict[str, LawFit], f_scale: float
) -> dict[str, Any]:
    """All runs at once, L = L_bf16 + delta_setting, started from the two-stage estimates."""
    keys = [k for k, f in deltas.items() if "coef" in f.internal]
    quant = quant[quant["fit_key"].isin(keys)]
    tied = base.internal["tied"]
    tags = {key: f"s{i}" for i, key in enumerate(keys)}
    params = _start_params(base, {tags[k]: deltas[k] for k in keys})
    frames = [bf16.assign(fit_key="bf16"), quant]
    data = pd.concat(frames, ignore_index=True)
    x_n, x_d = data["n_params"].to_numpy() / N_UNIT, data["tokens"].to_numpy() / D_UNIT
    loss = data["loss"].to_numpy()
    mats = {
        k: (
            data["fit_key"].to_numpy() == k,
            deltas[k]
            .internal["design"]
            .matrix(data["n_params"], data["tokens"], data["G"].fillna(2.0)),
        )
        for k in keys
    }

    def resid(p):
        pred = bf16_loss(p.valuesdict(), x_n, x_d)
        for key, (mask, mat) in mats.items():
            cols = deltas[key].internal["design"].columns
            coef = np.array(
                [p[f"{tags[key]}_c0"].value] + [p[f"{tags[key]}_{c}"].value for c in cols]
            )
            pred = pred + mask * np.exp(mat @ coef)
        return np.log(np.maximum(pred, LOSS_FLOOR)) - np.log(loss)

    out = lmfit.Minimizer(resid, params).minimize(
        method="least_squares", loss="huber", f_scale=f_scale
    )
    theta_j = np.array([out.params[n].value for n in ("A", "B", "E", "alpha", "beta")])
    base_params = dict(
        zip(
            BASE_PARAMS,
            map(float, base_raw(theta_j[:4] if tied else theta_j, tied)[0]),
            strict=True,
        )
    )
    delta_params = {}
    for key in keys:
        design = deltas[key].internal["design"]
        coef = np.array(
            [out.params[f"{tags[key]}_c0"].value]
            + [out.params[f"{tags[key]}_{c}"].value for c in design.columns]
        )
        raw = design.to_raw(coef)[0]
        delta_params[key] = {
            p: (float(v) if p == "k" or p in design.columns else None)
            for p, v in zip(DELTA_PARAMS, raw, strict=True)
        }
    names = [n for n in out.params if out.params[n].vary]
    return {
        "base": base_params,
        "delta": delta_params,
        "n_runs": len(data),
        "cost": huber_cost(out.residual, f_scale),
        "converged": bool(out.success),
        "bound_hits": bound_hits(out.params, tuple(names)),
        "note": "point estimate started from the two-stage fit; intervals come from the two-stage bootstrap",
    }
