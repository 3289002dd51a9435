"""Out-of-sample checks and the paper's Table 2 / Table 4 comparison of delta laws.

The metric is the paper's: mean |predicted - actual| / actual over paired runs
(`mean_abs_rel_error`; fit.json keeps the key `rel_error`). It is not the quantizer's NMSE.
N and D are compared by cell (analysis/cells.py), so measured counts hold out together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.law.base_fit import LawFit, fit_base
from qat_sweep.analysis.law.delta_fit import fit_delta, fit_n_only, predict_delta_rows
from qat_sweep.analysis.law.formulas import bf16_loss


def mean_abs_rel_error(pred: np.ndarray, actual: np.ndarray) -> float | None:
    """mean |pred - actual| / |actual| over finite pairs (None if there are none)."""
    ok = np.isfinite(pred) & np.isfinite(actual)
    return float(np.mean(np.abs(pred[ok] - actual[ok]) / np.abs(actual[ok]))) if ok.any() else None


def compare_laws(quant: pd.DataFrame, deltas: dict[str, LawFit]) -> dict[str, Any]:
    """In-sample relative error of (i) our law, (ii) N-only per G, (iii) ours without D."""
    out: dict[str, Any] = {}
    for key, fit in deltas.items():
        part = quant[quant["fit_key"] == key].reset_index(drop=True)
        actual = part["delta"].to_numpy()
        n_only, per_g = fit_n_only(part, key)
        no_d = fit_delta(part, key, terms=("gamma_G", "gamma_N"))
        out[key] = {
            "ours": fit.stats.get("rel_error"),
            "n_only": mean_abs_rel_error(n_only, actual),
            "no_d": no_d.stats.get("rel_error"),
            "n_only_params_per_G": per_g,
            "paper": paper.REL_ERROR.get(key),
        }
    return out


def _predict_split(
    train_b: pd.DataFrame,
    train_q: pd.DataFrame,
    test_b: pd.DataFrame,
    test_q: pd.DataFrame,
    tied: bool,
    f_scale: float,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "n_train": len(train_b) + len(train_q),
        "n_test": len(test_b) + len(test_q),
    }
    if len(test_b):
        base = fit_base(train_b, tied=tied, f_scale=f_scale)
        if base.params["A"] is None:
            result["bf16"] = {"note": "; ".join(base.notes)}
        else:
            pred = bf16_loss(base.params, test_b["n_params"], test_b["tokens"])
            result["bf16"] = {
                "n_test": len(test_b),
                "loss_rel_error": mean_abs_rel_error(pred, test_b["loss"].to_numpy()),
                "loss_mean_abs_error": float(np.mean(np.abs(pred - test_b["loss"].to_numpy()))),
            }
    deltas: dict[str, Any] = {}
    for key, test in test_q.groupby("fit_key"):
        train = train_q[train_q["fit_key"] == key]
        if len(train) < 5:
            deltas[key] = {"note": f"{len(train)} training runs: not fitted"}
            continue
        fit = fit_delta(train.reset_index(drop=True), key)
        needed = _extrapolated(train, test)
        blocked = sorted(set(needed) & set(fit.not_identifiable))
        if blocked:
            deltas[key] = {"note": f"cannot extrapolate: {', '.join(blocked)} not identifiable"}
            continue
        pred = predict_delta_rows(fit, test)
        deltas[key] = {
            "n_test": len(test),
            "rel_error": mean_abs_rel_error(pred, test["delta"].to_numpy()),
        }
    result["delta"] = deltas
    return result


def _extrapolated(train: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    """Exponents a test set needs: those whose regressor takes unseen values (cells)."""
    (train_n, train_d), (test_n, test_d) = cell_values(train), cell_values(test)
    needed = []
    for seen, new, name in (
        (train_n, test_n, "gamma_N"),
        (train_d, test_d, "gamma_D"),
        (train["G"].to_numpy(), test["G"].to_numpy(), "gamma_G"),
    ):
        if not set(new) <= set(seen):
            needed.append(name)
    return needed


def leave_largest_out(
    bf16: pd.DataFrame, quant: pd.DataFrame, column: str, tied: bool, f_scale: float
) -> dict[str, Any]:
    """Fit without the largest N (or D) and predict those runs."""
    axis = 0 if column == "n_params" else 1
    cells_b, cells_q = cell_values(bf16)[axis], cell_values(quant)[axis]
    values = sorted(set(cells_b) | set(cells_q))
    if len(values) < 3:
        return {"note": f"{len(values)} distinct {column} values: need 3 to leave the largest out"}
    largest = values[-1]
    split = {
        "held_out": float(largest),
        **_predict_split(
            bf16[cells_b < largest],
            quant[cells_q < largest],
            bf16[cells_b == largest],
            quant[cells_q == largest],
            tied,
            f_scale,
        ),
    }
    return split


def holdout_check(
    base: LawFit, deltas: dict[str, LawFit], hold_b: pd.DataFrame, hold_q: pd.DataFrame
) -> dict[str, Any]:
    """Runs flagged `holdout` (e.g. the 973M validation cells), predicted by the main fits."""
    if hold_b.empty and hold_q.empty:
        return {"note": "no runs flagged holdout (use a holdout column or --holdout QUERY)"}
    out: dict[str, Any] = {"n_test": len(hold_b) + len(hold_q)}
    if len(hold_b) and base.params.get("A") is not None:
        pred = bf16_loss(base.params, hold_b["n_params"], hold_b["tokens"])
        out["bf16"] = {"loss_rel_error": mean_abs_rel_error(pred, hold_b["loss"].to_numpy())}
    out["delta"] = {}
    for key, test in hold_q.groupby("fit_key"):
        fit = deltas.get(key)
        if fit is None or "coef" not in fit.internal:
            out["delta"][key] = {"note": "no fitted law for this setting"}
            continue
        pred = predict_delta_rows(fit, test)
        out["delta"][key] = {
            "n_test": len(test),
            "rel_error": mean_abs_rel_error(pred, test["delta"].to_numpy()),
        }
    return out
