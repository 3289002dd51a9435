"""One `fit` run end to end: table -> QC -> fits -> bootstrap -> validation -> outputs.

Deterministic for a given table and seed, so re-running rewrites identical results.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.base_points import select_base_runs, with_extra
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.collect import InputError, excluded_list
from qat_sweep.analysis.law import validate
from qat_sweep.analysis.law.base_fit import LawFit, fit_base
from qat_sweep.analysis.law.bootstrap import bootstrap
from qat_sweep.analysis.law.compare import compare_setting, law_entry
from qat_sweep.analysis.law.delta_fit import fit_delta
from qat_sweep.analysis.law.formulas import LAWS
from qat_sweep.analysis.law.joint_fit import fit_joint
from qat_sweep.analysis.law.law_fit import fit_law
from qat_sweep.analysis.law.start_fractions import compare_start_fractions
from qat_sweep.analysis.predict import BOOT_FILE, LAW_SEP, SavedFit, bootstrap_key, predict_point
from qat_sweep.analysis.report import analyses

from qat_sweep.common import atomic_open, json_safe, write_json_atomic

SCHEMA = 1
PREDICTION_SIZES = {"1B": (1e9, 2048), "7B": (7e9, 4096), "70B": (70e9, 8192)}
PREDICTION_TOKENS_PER_PARAM = (20, 100)
PREDICTION_G = 128
TABLE_COLUMNS = [
    "run_key", "sweep", "model", "n_params", "tokens", "scheme", "format", "group_size", "lr", "seed",
    "loss", "val_loss", "hidden_size", "status", "holdout", "G", "bf16_loss", "delta", "excluded",
]  # fmt: skip


@dataclass
class Settings:
    """Everything that changes a fit; written to fit.json so a result says how it was made."""

    bootstrap: int = 1000
    seed: int = 0
    tied: bool = True
    joint: bool = False
    base_f_scale: float = 1e-3
    delta_f_scale: float | None = None
    holdout: str | None = None
    base_lr: str = "best"
    law: str | None = None  # --law NAME: use this law wherever it is fitted, not the selection
    source: str = ""
    base_models: str | None = None  # --base-models LO..HI: the BF16 runs of the base fit
    extra_bf16: str | None = None  # --extra-bf16 FILE.csv: external points added to it
    channel_g: str = "hidden"  # --channel-g: G per channel, hidden size or reduction dims


@dataclass
class FitOutcome:
    result: dict[str, Any]
    table: pd.DataFrame
    base: LawFit
    deltas: dict[str, LawFit]  # the selected (or --law) law of each setting
    bf16: pd.DataFrame
    quant: pd.DataFrame
    seconds: float
    laws: dict[str, dict[str, LawFit | str]] = field(default_factory=dict)  # name -> fit or why not
    paper: dict[str, LawFit] = field(default_factory=dict)  # the paper's law of each setting


def _apply_holdout(table: pd.DataFrame, query: str | None) -> pd.DataFrame:
    if not query:
        return table
    try:
        chosen = table.query(query).index
    except Exception as err:  # pandas raises many types for a bad expression
        raise InputError(f"bad --holdout query {query!r}: {err}") from err
    table = table.copy()
    table.loc[chosen, "holdout"] = True
    return table


def _best_lr(bf16: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Base law on the best learning rate per (N, D, seed): the Chinchilla envelope. Every run
    at that learning rate stays (replicates of the cell are data)."""
    n_cell, d_cell = cell_values(bf16)
    cells = bf16.assign(_n=n_cell, _d=d_cell)
    by_loss = cells.sort_values("loss").groupby(["_n", "_d", "seed"], dropna=False)
    best_lr = by_loss["lr"].transform("first").reindex(cells.index)
    best = bf16[(cells["lr"] == best_lr) | (cells["lr"].isna() & best_lr.isna())]
    return best, len(bf16) - len(best)


def run_fit(
    table: pd.DataFrame,
    skipped: list[dict[str, str]],
    settings: Settings,
    extra_bf16: pd.DataFrame | None = None,
) -> FitOutcome:
    """Fit everything; raise InputError when nothing usable is left. `extra_bf16` holds
    external BF16 points (base_points.read_extra_bf16) that join the base fit only."""
    start = time.perf_counter()
    table = _apply_holdout(table, settings.holdout)
    usable = table[table["excluded"] == ""]
    fit_rows = usable[~usable["holdout"]]
    bf16_all = fit_rows[fit_rows["scheme"] == "bf16"]
    quant = fit_rows[fit_rows["scheme"] != "bf16"].reset_index(drop=True)
    every_quant = quant  # pooled over start fractions, a setting too thin alone still counts
    if bf16_all.empty and quant.empty:
        reasons = sorted(set(table["excluded"]) - {""})
        raise InputError(
            "no usable runs to fit" + (f" (excluded: {'; '.join(reasons[:5])})" if reasons else "")
        )
    in_range, range_note = select_base_runs(bf16_all, settings.base_models)
    bf16, dropped_lr = _best_lr(in_range) if settings.base_lr == "best" else (in_range, 0)
    bf16 = with_extra(bf16.reset_index(drop=True), extra_bf16)
    base = fit_base(bf16, tied=settings.tied, f_scale=settings.base_f_scale)
    if range_note:
        base.notes.append(range_note)
    if dropped_lr:
        base.notes.append(
            f"{dropped_lr} BF16 runs at a non-best learning rate left out of the base fit"
        )
    deltas: dict[str, LawFit] = {}
    for key, part in quant.groupby("fit_key", sort=True):
        if len(part) < 2:
            continue
        deltas[key] = fit_delta(
            part.reset_index(drop=True), key, settings.delta_f_scale, seed=settings.seed
        )
    quant = (
        quant[quant["fit_key"].isin(list(deltas))]
        .sort_values("fit_key", kind="stable")
        .reset_index(drop=True)
    )
    quant = (
        pd.concat([quant[quant["fit_key"] == k] for k in deltas], ignore_index=True)
        if deltas
        else quant
    )
    laws = {
        key: {
            name: fit_law(
                quant[quant["fit_key"] == key].reset_index(drop=True), law, key, fit, base.params,
                settings.seed,
            )
            for name, law in LAWS.items()
        }
        for key, fit in deltas.items()
    }  # fmt: skip
    bootstrap(bf16, quant, base, deltas, settings.bootstrap, settings.seed, laws)
    paper_fits = dict(deltas)
    delta_json = _select_laws(quant, base, deltas, laws, settings)
    hold = usable[usable["holdout"]]
    validation = {
        "laws": validate.compare_laws(quant, paper_fits),
        "leave_largest_N_out": validate.leave_largest_out(
            bf16, quant, "n_params", settings.tied, settings.base_f_scale
        ),
        "leave_largest_D_out": validate.leave_largest_out(
            bf16, quant, "tokens", settings.tied, settings.base_f_scale
        ),
        "holdout": validate.holdout_check(
            base, deltas, hold[hold["scheme"] == "bf16"], hold[hold["scheme"] != "bf16"]
        ),
    }
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "base": {
            **base.to_json(),
            "paper": paper.BASE,
            "paper_r2": paper.BASE_R2,
            # the fitted range, so predictions can say how far they extrapolate
            "range": {
                c: [float(bf16[c].min()), float(bf16[c].max())] for c in ("n_params", "tokens")
            },
            "models": settings.base_models,
            "extra_bf16": _extra_points(bf16, base),
        },
        "delta": delta_json,
        "start_fractions": compare_start_fractions(
            every_quant, base.params, settings.delta_f_scale, settings.seed
        ),
        "joint": fit_joint(bf16, quant, base, paper_fits, settings.base_f_scale)
        if settings.joint and base.params["A"] is not None
        else None,
        "validation": validation,
        "analyses": analyses.run_all(table, quant, paper_fits),
        "excluded": excluded_list(table, skipped),
        "settings": asdict(settings),
        "n_runs": {
            "records": len(table) + len(skipped),
            "usable": len(usable),
            "holdout": len(hold),
        },
    }
    seconds = time.perf_counter() - start
    result["timing_s"] = {"fit": round(seconds, 3)}
    return FitOutcome(result, table, base, deltas, bf16, quant, seconds, laws, paper_fits)


def _extra_points(bf16: pd.DataFrame, base: LawFit) -> list[dict[str, Any]]:
    """fit.json's external BF16 points with the base law's residual at each (log loss)."""
    if "source" not in bf16.columns:
        return []
    extra = (bf16["source"] != "").to_numpy()
    resid = base.resid if base.resid.size == len(bf16) else np.full(len(bf16), np.nan)
    return [
        {**{k: row[k] for k in ("model", "n_params", "tokens", "loss", "source")},
         "log_residual": float(r)}
        for row, r in zip(bf16[extra].to_dict("records"), resid[extra], strict=True)
    ]  # fmt: skip


def _select_laws(
    quant: pd.DataFrame,
    base: LawFit,
    deltas: dict[str, LawFit],
    laws: dict[str, dict[str, LawFit | str]],
    settings: Settings,
) -> dict[str, Any]:
    """Compare every setting's laws on held-out cells, put the selected (or --law) fit in
    `deltas` and return fit.json's delta entries."""
    out: dict[str, Any] = {}
    for key, paper_fit in list(deltas.items()):
        part = quant[quant["fit_key"] == key].reset_index(drop=True)
        entries, selection = compare_setting(
            part, laws[key], paper_fit.f_scale, base.params, settings.law, settings.seed
        )
        chosen = selection["law"]
        deltas[key] = laws[key][chosen]
        out[key] = {
            **deltas[key].to_json(),
            "law": chosen,
            "formula": LAWS[chosen].formula,
            "selected": chosen,
            "selection": selection,
            "laws": {name: law_entry(name, laws[key][name], entries) for name in LAWS},
            "paper": paper.TABLE1.get(key),
        }
    return out


def bootstrap_arrays(outcome: FitOutcome) -> dict[str, np.ndarray]:
    """Draws and residuals: the selected law of each setting under its plain key (what
    predict reads), and every fitted law under <key>__law__<name> (predict --law NAME)."""
    arrays: dict[str, np.ndarray] = {"resid__base": outcome.base.resid}
    if outcome.base.boot is not None:
        arrays["base"] = outcome.base.boot
    for key, fit in outcome.deltas.items():
        arrays["resid__" + bootstrap_key(key)] = fit.resid
        if fit.boot is not None:
            arrays[bootstrap_key(key)] = fit.boot
        for name, law_fit in outcome.laws.get(key, {}).items():
            if isinstance(law_fit, str):
                continue
            arrays["resid__" + bootstrap_key(key) + LAW_SEP + name] = law_fit.resid
            if law_fit.boot is not None:
                arrays[bootstrap_key(key) + LAW_SEP + name] = law_fit.boot
    return arrays


def prediction_table(saved: SavedFit) -> list[dict[str, Any]]:
    """Predictions at 1B / 7B / 70B x 20 and 100 tokens per parameter, G = 128, per setting
    (its selected law; a setting whose law has no value at G = 128 is left out)."""
    rows = []
    if saved.result["base"]["params"].get("A") is None:
        return rows
    for label, (n, hidden) in PREDICTION_SIZES.items():
        for ratio in PREDICTION_TOKENS_PER_PARAM:
            for key in saved.result["delta"]:
                try:
                    pred = predict_point(saved, n, n * ratio, key, PREDICTION_G, hidden)
                except InputError:  # a per-G law without G = 128: no prediction there
                    continue
                rows.append({"model": label, "n_params": n, "tokens": n * ratio,
                             "tokens_per_param": ratio, "setting": key,
                             "law": pred.get("law"), **{
                    name: pred[name] for name in ("bf16_loss", "delta", "qat_loss", "eff_multiplier")
                }, "warnings": pred["warnings"]})  # fmt: skip
    return rows


def write_outputs(outcome: FitOutcome, out: Path) -> Path:
    """fit.json, bootstrap.npz and runs.csv; returns the fit.json path."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = bootstrap_arrays(outcome)
    with atomic_open(out / BOOT_FILE, "wb") as f:
        np.savez(f, **arrays)
    outcome.result["predictions"] = prediction_table(SavedFit(outcome.result, arrays))
    columns = [c for c in TABLE_COLUMNS if c in outcome.table.columns]
    extra = [c for c in outcome.table.columns if c not in columns and c != "fit_key"]
    with atomic_open(out / "runs.csv") as f:
        outcome.table[columns + extra].to_csv(f, index=False)
    check_intervals(outcome.result)
    path = out / "fit.json"
    write_json_atomic(path, json_safe(outcome.result))
    return path


def check_intervals(result: dict[str, Any]) -> None:
    """Every interval written contains its estimate, and every PI its CI (else a bug: raise)."""
    bad = []

    def inside(label: str, value: Any, lo_hi: Any) -> None:
        if value is None or lo_hi is None:
            return
        lo, hi = lo_hi
        slack = 1e-9 * (1 + abs(value))
        if not lo - slack <= value <= hi + slack:
            bad.append(f"{label}: {value} outside [{lo}, {hi}]")

    fits = {"base": result["base"], **{f"delta {k}": f for k, f in result["delta"].items()}}
    for key, fit in result["delta"].items():
        for name, entry in (fit.get("laws") or {}).items():
            if entry.get("fitted"):
                fits[f"delta {key} law {name}"] = entry
    for label, fit in fits.items():
        for name, value in fit["params"].items():
            inside(f"{label} {name}", value, fit["ci95"].get(name))
    for row in result.get("predictions", []):
        for name in ("bf16_loss", "delta", "qat_loss", "eff_multiplier"):
            item = row.get(name) or {}
            label = (
                f"prediction {row['model']} D/N={row['tokens_per_param']} {row['setting']} {name}"
            )
            inside(label, item.get("value"), item.get("ci95"))
            inside(label, item.get("value"), item.get("pi95"))
            for end in item.get("ci95") or []:
                inside(f"{label} CI end", end, item.get("pi95"))
    if bad:
        raise AssertionError("intervals that exclude their estimate: " + "; ".join(bad))
