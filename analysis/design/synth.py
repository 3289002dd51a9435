"""Synthetic run tables with a known law: the ground truth for tests and the timing benchmark.

The grid is the paper's (docs/science.md, 289 runs). Noise has a per-(N, D)-cell part shared by
a BF16 run and its QAT twins (same data order) plus a per-run part, like real sweeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.law.formulas import bf16_loss, delta_loss, group_value

from qat_sweep.common import json_safe
from qat_sweep.model.precision import SITES

PRESETS: dict[str, tuple[float, int]] = {
    "74M": (74.3e6, 768),
    "145M": (144.7e6, 1024),
    "297M": (297.3e6, 1536),
    "595M": (594.5e6, 1536),
    "973M": (973.1e6, 2048),
}
MAIN_MODELS = ("74M", "145M", "297M", "595M")
MAIN_TOKENS = (10e9, 20e9, 50e9, 100e9)
GROUPS: tuple[Any, ...] = (32, 64, 128, 256, "channel")
LR = {"74M": 1.5e-3, "145M": 1e-3, "297M": 8e-4, "595M": 6e-4, "973M": 6e-4}


@dataclass
class Truth:
    """Known parameters: the base law and one delta law per 'scheme/format'."""

    base: dict[str, float] = field(default_factory=lambda: dict(paper.BASE))
    delta: dict[str, dict[str, float]] = field(
        default_factory=lambda: {
            **paper.TABLE1,
            "w4a4/fp4": {"k": 0.15, "gamma_N": 0.22, "gamma_D": 0.075, "gamma_G": 0.70},
        }
    )


def paper_grid() -> list[dict[str, Any]]:
    """The 289 runs of the reconstructed paper grid, as key fields only."""
    runs: list[dict[str, Any]] = []

    def add(model, tokens, scheme, fmt, groups, lr=None, holdout=False):
        for g in groups:
            runs.append(
                {
                    "model": model,
                    "tokens": tokens,
                    "scheme": scheme,
                    "format": fmt,
                    "group_size": g,
                    "lr": lr or LR[model],
                    "holdout": holdout,
                }
            )

    for model in MAIN_MODELS:
        for tokens in MAIN_TOKENS:
            add(model, tokens, "bf16", "bf16", [None])
            for scheme in ("w4a4", "w4a16", "w16a4"):
                add(model, tokens, scheme, "int4", GROUPS)
    add("297M", 50e9, "w4a4", "fp4", GROUPS)
    add("595M", 100e9, "w4a4_fc2a8", "int4", GROUPS)
    add("595M", 100e9, "w16a4_fc2a8", "int4", GROUPS)
    for tokens in (100e9, 200e9):
        add("973M", tokens, "bf16", "bf16", [None], holdout=True)
        add("973M", tokens, "w4a4", "int4", GROUPS, holdout=True)
    for lr in (5e-4, 2e-3, 4e-3):
        add("145M", 20e9, "bf16", "bf16", [None], lr=lr)
        add("145M", 20e9, "w4a4", "int4", [128], lr=lr)
    return runs


def synthetic_table(
    truth: Truth | None = None,
    noise: float = 0.002,
    cell_noise: float = 0.01,
    outliers: int = 0,
    seed: int = 0,
    runs: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Analysis table with losses drawn from the truth; `outliers` quantized runs get +0.2."""
    truth = truth or Truth()
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(runs if runs is not None else paper_grid())
    table["n_params"] = [PRESETS[m][0] for m in table["model"]]
    table["hidden_size"] = [PRESETS[m][1] for m in table["model"]]
    table["seed"] = 0
    cells = {
        key: rng.normal(0, cell_noise)
        for key in set(zip(table["n_params"], table["tokens"], strict=True))
    }
    shared = np.array([cells[k] for k in zip(table["n_params"], table["tokens"], strict=True)])
    loss = bf16_loss(truth.base, table["n_params"], table["tokens"]) + shared
    for i, row in table.iterrows():
        if row["scheme"] != "bf16":
            g = group_value(row["group_size"], row["hidden_size"])
            loss[i] += delta_loss(
                truth.delta[f"{row['scheme']}/{row['format']}"], row["n_params"], row["tokens"], g
            )
    table["loss"] = loss + rng.normal(0, noise, len(table))
    quant = np.flatnonzero(table["scheme"].to_numpy() != "bf16")
    if outliers:
        table.loc[rng.choice(quant, outliers, replace=False), "loss"] += 0.2
    table["run_key"] = [f"run{i:04d}" for i in range(len(table))]
    return table


def table_to_records(table: pd.DataFrame, sweep: str = "synthetic") -> list[dict[str, Any]]:
    """Result.json-shaped records (the run record of docs/architecture.md, schema 1) for a synthetic table."""
    records = []
    for row in table.to_dict("records"):
        quantized = row["scheme"] != "bf16"
        sites = {
            s: {
                "kurtosis": 120.0 if s == "fc2" else 4.0,
                "act_nmse": 0.1 if quantized else None,
                "weight_nmse": 0.08 if quantized else None,
                "act_bits": 4 if quantized else None,
                "weight_bits": 4 if quantized else None,
            }
            for s in SITES
        }
        records.append(
            {
                "schema": 1,
                "sweep": sweep,
                "status": "completed",
                "error": None,
                "n_params_total": row["n_params"] * 1.3,
                "val_loss": row["loss"] + 0.01,
                "metrics": {"quant": {"sites": sites, "layers": {}}, "tokens_per_s": 1e5},
                "config": {},
                "versions": {},
                "slurm": None,
                "wandb": None,
                **json_safe(row),
            }
        )
    return records


def perturbed_truth(rng: np.random.Generator, base: Mapping[str, float] | None = None) -> Truth:
    """A random but plausible truth, so recovery tests are not tuned to Table 1 alone."""
    alpha = float(rng.uniform(0.25, 0.4))
    truth = Truth()
    truth.base = dict(
        base
        or {
            "A": float(rng.uniform(150, 400)),
            "alpha": alpha,
            "B": float(rng.uniform(300, 900)),
            "beta": alpha,
            "E": float(rng.uniform(1.6, 2.2)),
        }
    )
    truth.delta = {}
    for key in Truth().delta:
        gammas = {
            "gamma_N": float(rng.uniform(0.15, 0.4)),
            "gamma_D": float(rng.uniform(0.03, 0.17)),
            "gamma_G": float(rng.uniform(0.3, 1.0)),
        }
        # k puts delta at the grid centre (N=2e8, D=3e10, G=128) in a realistic 0.02-0.08 range
        shape = delta_loss({"k": 1.0, **gammas}, 2e8, 3e10, 128)
        truth.delta[key] = {"k": float(rng.uniform(0.02, 0.08) / shape), **gammas}
    return truth


# ---------------------------------------------------------------- a levelling-off truth
#
# A table in the spirit of public NVFP4 QAT runs (30M-200M parameters, D/N 25-800, BF16 twins,
# one block size per format), drawn from the levelling law (formulas.LEVELLED_D) with its bend
# inside the grid: the test table of "which law holds" (docs/laws.md). Parameters are ours.

LEVEL_MODELS: dict[str, tuple[float, int]] = {
    "30M": (30e6, 512), "50M": (50e6, 640), "85M": (85e6, 768), "130M": (130e6, 1024),
    "200M": (200e6, 1280),
}  # fmt: skip
LEVEL_TOKENS = (1.25e9, 2.5e9, 5e9, 10e9, 20e9)  # one token grid for every N, as public sweeps
LEVEL_RATIO = (25, 800)  # cells kept: 25 <= D/N <= 800
LEVEL_FORMATS: dict[str, dict[str, Any]] = {
    # format -> block size, delta at the grid's centre (N = 80M, D/N = 100) and the levelled
    # law's shape (gamma_N, gamma_D, gamma_G, c in tokens per parameter)
    "nvfp4": {"G": 16, "centre": 0.040, "gamma_N": 0.25, "gamma_D": 0.40, "gamma_G": 0.78, "c": 120.0},
    "mxfp4": {"G": 32, "centre": 0.055, "gamma_N": 0.25, "gamma_D": 0.45, "gamma_G": 0.78, "c": 150.0},
    "int4": {"G": 32, "centre": 0.045, "gamma_N": 0.22, "gamma_D": 0.35, "gamma_G": 0.78, "c": 100.0},
}  # fmt: skip


def levelling_truth() -> dict[str, dict[str, float]]:
    """The levelled law's parameters per 'w4a4/<format>' (k from delta at the centre)."""
    from qat_sweep.analysis.law.formulas import LEVELLED_D, Points, law_log_delta

    out = {}
    for fmt, spec in LEVEL_FORMATS.items():
        shape = {k: v for k, v in spec.items() if k not in ("G", "centre")}
        centre = Points.at(80e6, 80e6 * 100, spec["G"], spec["G"])
        k = spec["centre"] / float(
            np.exp(law_log_delta(LEVELLED_D, {"k": 1.0, **shape}, centre))[0]
        )
        out[f"w4a4/{fmt}"] = {"k": k, **shape}
    return out


def levelling_table(noise: float = 0.0015, cell_noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """Analysis table (as synthetic_table's) whose delta follows the levelling law: each format
    at every (N, D) of the grid with 25 <= D/N <= 800, with its BF16 twin; noise per run plus
    per (N, D) cell."""
    from qat_sweep.analysis.law.formulas import LEVELLED_D, Points, law_log_delta

    rng = np.random.default_rng(seed)
    truth = levelling_truth()
    rows = []
    for model, (n, hidden) in LEVEL_MODELS.items():
        for tokens in LEVEL_TOKENS:
            if not LEVEL_RATIO[0] <= tokens / n <= LEVEL_RATIO[1]:
                continue
            shared = rng.normal(0, cell_noise)
            base = float(bf16_loss(paper.BASE, n, tokens)) + shared
            common = {"model": model, "n_params": n, "hidden_size": hidden, "tokens": tokens,
                      "lr": 1e-3, "seed": 0, "holdout": False}  # fmt: skip
            rows.append({**common, "scheme": "bf16", "format": "bf16", "group_size": None,
                         "loss": base + rng.normal(0, noise)})  # fmt: skip
            for fmt, spec in LEVEL_FORMATS.items():
                point = Points.at(n, tokens, spec["G"], spec["G"])
                delta = float(np.exp(law_log_delta(LEVELLED_D, truth[f"w4a4/{fmt}"], point))[0])
                rows.append({**common, "scheme": "w4a4", "format": fmt, "group_size": spec["G"],
                             "loss": base + delta + rng.normal(0, noise)})  # fmt: skip
    table = pd.DataFrame(rows)
    table["run_key"] = [f"lv{i:04d}" for i in range(len(table))]
    return table


# QAT after BF16 (formulas.D_FP_QAT): W4A4 INT4 at start fractions 0 (the paper's protocol) to
# 0.9, at the paper's four main N and three D, G 32 and 128, with one BF16 twin per (N, D).
START_FRACTIONS = (0.0, 0.3, 0.5, 0.7, 0.9)
START_TOKENS = (10e9, 20e9, 50e9)
START_GROUPS = (32, 128)
START_TRUTH = {"k": 0.01, "gamma_G": 0.78, "phi": 1.0, "psi": 0.3, "omega": 0.3,
               "lambda": 0.5, "nu": 0.2, "xi": 0.6, "rho": 0.4}  # fmt: skip


def start_fraction_table(
    law: str = "D_fp_qat", noise: float = 0.001, cell_noise: float = 0.005, seed: int = 0
) -> pd.DataFrame:
    """Analysis table of QAT after BF16 whose delta follows `law`: D_fp_qat at START_TRUTH, or
    the paper's law at Table 1's W4A4 INT4 whatever the start fraction (when QAT starts does not
    matter); noise per run plus per (N, D) cell."""
    from qat_sweep.analysis.law.formulas import Points, get_law, law_log_delta

    rng = np.random.default_rng(seed)
    truth = START_TRUTH if law == "D_fp_qat" else paper.TABLE1["w4a4/int4"]
    rows = []
    for model in MAIN_MODELS:
        n, hidden = PRESETS[model]
        for tokens in START_TOKENS:
            base = float(bf16_loss(paper.BASE, n, tokens)) + rng.normal(0, cell_noise)
            common = {"model": model, "n_params": n, "hidden_size": hidden, "tokens": tokens,
                      "lr": LR[model], "seed": 0, "holdout": False}  # fmt: skip
            rows.append({**common, "scheme": "bf16", "format": "bf16", "group_size": None,
                         "start_fraction": 0.0, "loss": base + rng.normal(0, noise)})  # fmt: skip
            for f in START_FRACTIONS:
                for g in START_GROUPS:
                    point = Points.at(n, tokens, g, g, f)
                    delta = float(np.exp(law_log_delta(get_law(law), truth, point))[0])
                    rows.append({**common, "scheme": "w4a4", "format": "int4", "group_size": g,
                                 "start_fraction": f,
                                 "loss": base + delta + rng.normal(0, noise)})  # fmt: skip
    table = pd.DataFrame(rows)
    table["run_key"] = [f"sf{i:04d}" for i in range(len(table))]
    return table
