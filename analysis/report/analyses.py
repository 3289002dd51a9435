"""The paper's secondary analyses (docs/science.md), each computed only when the runs exist.

Every function returns a JSON-able dict; when data is missing it says which runs are needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.collect import SITE_METRICS, SITES
from qat_sweep.analysis.law.base_fit import LawFit

from qat_sweep.common import finite_or_none

MATCH = ["n_params", "tokens", "G", "lr", "seed"]


def _by_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """N and D replaced by their cells, so measured counts of one cell match and group."""
    n_cell, d_cell = cell_values(frame)
    return frame.assign(n_params=n_cell, tokens=d_cell)


def _delta_of(quant: pd.DataFrame, key: str, name: str) -> pd.DataFrame:
    part = _by_cell(quant[quant["fit_key"] == key])
    return part[[*MATCH, "group_size", "delta"]].rename(columns={"delta": name})


def _matched(quant: pd.DataFrame, **keys: str) -> pd.DataFrame:
    frames = [_delta_of(quant, key, name) for name, key in keys.items()]
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge(frame.drop(columns="group_size"), on=MATCH)
    return merged


def decomposition(quant: pd.DataFrame) -> dict[str, Any]:
    """delta_W4A4 ~ k' (delta_W4A16 + delta_W16A4); paper k' = 0.906."""
    both = _matched(quant, w4a4="w4a4/int4", w4a16="w4a16/int4", w16a4="w16a4/int4")
    if len(both) < 2:
        return {
            "available": False,
            "missing": "needs W4A4, W4A16 and W16A4 INT4 runs in the same cells",
        }
    total = (both["w4a16"] + both["w16a4"]).to_numpy()
    k = float(np.sum(total * both["w4a4"]) / np.sum(total**2))
    pred = k * total
    growth = {
        name: _growth(quant, key, "tokens")
        for name, key in (("weight", "w4a16/int4"), ("act", "w16a4/int4"))
    }
    return {
        "available": True,
        "k_prime": k,
        "paper_k_prime": paper.FINDINGS["decomposition_k"],
        "n": len(both),
        "rel_error": float(np.mean(np.abs(pred - both["w4a4"]) / both["w4a4"])),
        "growth_with_D": growth,
        "paper_growth_with_D": {
            "weight": paper.FINDINGS["weight_growth_with_d"],
            "act": paper.FINDINGS["act_growth_with_d"],
        },
        "points": both[["w4a4"]].assign(sum=total).to_dict("list"),
    }


def _growth(quant: pd.DataFrame, key: str, column: str) -> float | None:
    """Mean relative change of delta from the smallest to the largest value of `column`."""
    part = _by_cell(quant[quant["fit_key"] == key])
    others = [c for c in ("n_params", "tokens", "group_size") if c != column]
    changes = []
    for _, group in _cell_means(part, column, others).groupby(others):
        if group[column].nunique() >= 2:
            ordered = group.sort_values(column)
            changes.append(ordered["delta"].iloc[-1] / ordered["delta"].iloc[0] - 1)
    return float(np.mean(changes)) if changes else None


def _cell_means(part: pd.DataFrame, column: str, others: list[str]) -> pd.DataFrame:
    """Average over learning rates and seeds; G orders by its value (channel = hidden size)."""
    keys = [*others, column]
    frame = part.assign(group_size=part["group_size"].astype(str))
    if column == "G":
        frame = frame.assign(group_size="all")
    return frame.groupby(keys, as_index=False)["delta"].mean()


def ratio_r(quant: pd.DataFrame) -> dict[str, Any]:
    """R = delta_W16A4 / delta_W4A16 over D/N and G (and with the FC2 input at 8 bits)."""
    out: dict[str, Any] = {}
    for label, act_key in (("int4", "w16a4/int4"), ("fc2_8bit", "w16a4_fc2a8/int4")):
        both = _matched(quant, act=act_key, weight="w4a16/int4")
        if both.empty:
            out[label] = {
                "available": False,
                "missing": f"needs {act_key} and w4a16/int4 runs in the same cells",
            }
            continue
        both["D/N"] = (both["tokens"] / both["n_params"]).round(0)
        both["R"] = both["act"] / both["weight"]
        grid = both.pivot_table(index="D/N", columns="group_size", values="R", aggfunc="mean")
        out[label] = {
            "available": True,
            "min": float(both["R"].min()),
            "max": float(both["R"].max()),
            "frac_above_1": float(np.mean(both["R"] > 1)),
            "grid": {
                str(c): {f"{i:g}": finite_or_none(v) for i, v in grid[c].items()}
                for c in grid.columns
            },
        }
    return out


def fc2_effect(quant: pd.DataFrame) -> dict[str, Any]:
    """Reduction of delta per G when only the FC2 input is kept at 8 bits."""
    out: dict[str, Any] = {}
    for scheme in ("w4a4", "w16a4"):
        both = _matched(quant, full=f"{scheme}/int4", fc2=f"{scheme}_fc2a8/int4")
        if both.empty:
            out[scheme] = {
                "available": False,
                "missing": f"needs {scheme}_fc2a8/int4 beside {scheme}/int4 runs",
            }
            continue
        both["reduction"] = 1 - both["fc2"] / both["full"]
        per_g = both.groupby("group_size", sort=False)["reduction"].mean()
        out[scheme] = {
            "available": True,
            "reduction_per_G": {str(g): float(v) for g, v in per_g.items()},
        }
    out["paper"] = {
        "w4a4": {
            "32": paper.FINDINGS["fc2_8bit_reduction_g32"],
            "256": paper.FINDINGS["fc2_8bit_reduction_g256"],
        }
    }
    return out


def int4_vs_fp4(quant: pd.DataFrame) -> dict[str, Any]:
    """delta_INT4 - delta_FP4 per G (negative: INT4 better)."""
    both = _matched(quant, int4="w4a4/int4", fp4="w4a4/fp4")
    if both.empty:
        return {
            "available": False,
            "missing": "needs w4a4/fp4 runs in cells that also have w4a4/int4",
        }
    both["diff"] = both["int4"] - both["fp4"]
    per_g = both.groupby("group_size", sort=False)["diff"].mean()
    return {
        "available": True,
        "int4_minus_fp4_per_G": {str(g): float(v) for g, v in per_g.items()},
        "paper_channel_int4_minus_fp4": paper.FINDINGS["channel_int4_minus_fp4"],
    }


def _group_text(group: Any) -> str:
    """G as written in a sweep: 32 (not the 32.0 of a float column), or channel."""
    return str(int(group)) if isinstance(group, float) and group.is_integer() else str(group)


def format_comparison(table: pd.DataFrame) -> dict[str, Any]:
    """Every format present (label: rotation and encoding variants apart) of every scheme: its
    runs, how many have a BF16 twin and how many the fit uses, its mean delta per G, and its gap
    to INT4 at the same G in the cells both have (negative: better than INT4); a block format
    sits at its block. Deltas the fit leaves out (non-positive gaps) count here: this compares
    what the runs measured, not the laws."""
    runs = table[table["scheme"] != "bf16"]
    if runs.empty:
        return {"available": False, "missing": "no quantized runs"}
    paired = runs[np.isfinite(runs["delta"].astype(float))]
    out: dict[str, Any] = {}
    for key in sorted(runs["fit_key"].unique()):
        scheme = key.split("/")[0]
        mine = paired[paired["fit_key"] == key]
        part = _by_cell(mine) if len(mine) else mine
        per_g = part.assign(group_size=part["group_size"].map(_group_text))
        per_g = per_g.groupby("group_size", sort=False)["delta"].mean()
        entry: dict[str, Any] = {
            "runs": int((runs["fit_key"] == key).sum()),
            "paired": len(mine),
            "in_fit": int((mine["excluded"] == "").sum()),
            "cells": int(part[["n_params", "tokens"]].drop_duplicates().shape[0]),
            "mean_delta_per_G": {str(g): float(v) for g, v in per_g.items()},
            "minus_int4_per_G": None,
        }
        reference = f"{scheme}/int4"
        if key != reference and len(mine) and (paired["fit_key"] == reference).any():
            both = _delta_of(paired, key, "this").merge(
                _delta_of(paired, reference, "int4").drop(columns="group_size"), on=MATCH
            )
            both["gap"] = both["this"] - both["int4"]
            gaps = both.groupby(both["group_size"].map(_group_text), sort=False)["gap"].mean()
            entry["minus_int4_per_G"] = {str(g): float(v) for g, v in gaps.items()}
        out[key] = entry
    return {"available": True, "settings": out}


def site_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Mean per-site kurtosis and quantization error (metrics.quant) per scheme."""
    cols = [
        c
        for c in table.columns
        if c.split("_")[-1] in SITES and c.rsplit("_", 1)[0] in SITE_METRICS
    ]
    usable = table[table["excluded"] == ""]
    if not cols or usable[cols].isna().all().all():
        return {
            "available": False,
            "missing": "no metrics.quant.sites in the records (or a table without them)",
        }
    means = usable.groupby("fit_key")[cols].mean().dropna(axis=1, how="all")
    return {
        "available": True,
        "mean_per_setting": {
            k: {c: finite_or_none(v) for c, v in row.items()} for k, row in means.iterrows()
        },
        "paper_fc2_kurtosis": {
            "bf16": paper.FINDINGS["fc2_kurtosis_bf16"],
            "w4a4": paper.FINDINGS["fc2_kurtosis_w4a4"],
        },
    }


def contour_slopes(deltas: dict[str, LawFit]) -> dict[str, float | None]:
    """Iso-delta lines in (log N, log D) have slope d log D / d log N = gamma_N / gamma_D."""
    out: dict[str, float | None] = {}
    for key, fit in deltas.items():
        g_n, g_d = fit.params.get("gamma_N"), fit.params.get("gamma_D")
        out[key] = g_n / g_d if g_n is not None and g_d not in (None, 0) else None
    return out


def trends(quant: pd.DataFrame) -> dict[str, Any]:
    """Does delta fall with N, rise with D and with G, per setting, from the data alone."""
    out: dict[str, Any] = {}
    for key in sorted(quant["fit_key"].unique()):
        part = _by_cell(quant[quant["fit_key"] == key])
        entry: dict[str, Any] = {}
        for column, label in (("n_params", "N"), ("tokens", "D"), ("G", "G")):
            entry[label] = _direction(part, column)
        out[key] = entry
    return out


def _direction(part: pd.DataFrame, column: str) -> dict[str, Any]:
    others = [c for c in ("n_params", "tokens", "group_size") if c != column]
    ups, changes, gaps = 0, [], []
    for _, group in _cell_means(part, column, others).groupby(others):
        if group[column].nunique() < 2:
            continue
        ordered = group.sort_values(column)
        first, last = ordered["delta"].iloc[0], ordered["delta"].iloc[-1]
        ups += int(last > first)
        changes.append(last / first - 1)
        gaps.append(last - first)
    if not changes:
        return {"comparisons": 0, "verdict": "not testable (one value only)"}
    frac_up = ups / len(changes)
    verdict = "rises" if frac_up >= 0.75 else "falls" if frac_up <= 0.25 else "mixed"
    return {
        "comparisons": len(changes),
        "frac_rising": frac_up,
        "mean_rel_change": float(np.mean(changes)),
        "mean_abs_change": float(np.mean(gaps)),
        "verdict": verdict,
    }


def schedule_label(schedule: Any, start_fraction: float) -> str:
    """``cosine``, ``wsd``, ``cosine, BF16 to 0.5``: how a run was trained (records name it)."""
    name = str(schedule) if isinstance(schedule, str) else "unknown"
    return f"{name}, BF16 to {start_fraction:g}" if start_fraction else name


def schedule_comparison(table: pd.DataFrame) -> dict[str, Any]:
    """Mean delta of each schedule (LR schedule, QAT start) per scheme/format, over the
    (N, D, G) cells every schedule of that setting has: is the paper's D-trend the cosine's?
    As in format_comparison, every measured delta counts (WSD trunks are no runs of a cell)."""
    quant = table[(table["scheme"] != "bf16") & ~table["trunk"].astype(bool)]
    part = _by_cell(quant[np.isfinite(quant["delta"].astype(float))])
    part = part.assign(
        setting=part["scheme"] + "/" + part["format"],
        schedule=[
            schedule_label(s, f)
            for s, f in zip(part["schedule"], part["start_fraction"], strict=True)
        ],
    )
    settings: dict[str, Any] = {}
    for setting, rows in part.groupby("setting"):
        if rows["schedule"].nunique() < 2:
            continue
        cells = rows.pivot_table(
            index=["n_params", "tokens", "G"], columns="schedule", values="delta", aggfunc="mean"
        ).dropna()
        if cells.empty:
            continue
        trend = {
            name: _growth(rows[rows["schedule"] == name].assign(fit_key="x"), "x", "tokens")
            for name in cells.columns
        }
        settings[str(setting)] = {
            "cells": len(cells),
            "mean_delta": {str(k): float(v) for k, v in cells.mean().items()},
            "growth_with_D": {
                str(k): v if v is None else finite_or_none(v) for k, v in trend.items()
            },
        }
    if not settings:
        return {"available": False, "missing": "needs one setting trained under two schedules"}
    return {"available": True, "settings": settings}


def run_all(table: pd.DataFrame, quant: pd.DataFrame, deltas: dict[str, LawFit]) -> dict[str, Any]:
    return {
        "schedules": schedule_comparison(table),
        "trends": trends(quant),
        "decomposition": decomposition(quant),
        "ratio_R": ratio_r(quant),
        "fc2_8bit": fc2_effect(quant),
        "int4_vs_fp4": int4_vs_fp4(quant),
        "formats": format_comparison(table),
        "sites": site_metrics(table),
        "contour_slopes": contour_slopes(deltas),
    }
