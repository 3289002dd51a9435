"""`qat-sweep design sweep=NAME`: what a grid will be able to say, before it is paid for.

Simulates the sweep many times under a prior law and a noise model, refits every simulated data
set as `fit` would (analysis/simulate.py) and reports, per parameter, the expected 95% interval
(the central 95% of the refitted estimates) and how often fit would call it identified, and the
same for named target predictions, next to the grid's GPU-hours.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.law.formulas import BASE_PARAMS, GAMMA_BOUND, LAWS, Points, bf16_loss

from qat_sweep.common import format_number


def _param_rows(truth: dict[str, float], est: np.ndarray, ok: np.ndarray, names) -> dict:
    """Per parameter: expected interval over identified estimates, the identified share, and
    the share of fitted sweeps in which fit left it out (identify.py: not separable)."""
    fitted = np.isfinite(est[:, 0])
    out = {}
    for j, name in enumerate(names):
        item = sim.interval(np.where(ok[:, j], est[:, j], np.nan), truth.get(name))
        item["identified"] = float(ok[:, j].mean())
        item["left_out"] = float(np.mean(~np.isfinite(est[fitted, j]))) if fitted.any() else 1.0
        out[name] = item
    return out


def target_intervals(target: sim.Target, refits: sim.Refits, prior: sim.Prior) -> dict[str, Any]:
    """Expected 95% interval of delta and QAT loss at one target over the simulated sweeps."""
    if target.fit_key not in refits.delta:
        raise InputError(
            f"target {target.label}: this grid fits no delta law for {target.fit_key}; "
            f"it fits: {', '.join(sorted(refits.delta)) or 'none'}"
        )
    n, d, g = target.n_params, target.tokens, target.G
    key = target.fit_key
    law, names = refits.laws.get(key, "paper"), refits.names.get(key, sim.DELTA_PARAMS)
    delta = sim.predicted_delta(
        refits.delta[key], n, d, g, law, names, target.group_size, refits.base
    )
    truth = float(prior.fitted_law(key).delta(Points.at(n, d, g, target.group_size))[0])
    base = dict(zip(BASE_PARAMS, refits.base.T, strict=True))
    qat = bf16_loss(base, n, d) + delta
    true_qat = float(bf16_loss(prior.base, n, d)) + truth
    fitted = np.isfinite(refits.delta[target.fit_key][:, 0])
    est, ok = refits.delta[target.fit_key][fitted], refits.delta_ok[target.fit_key][fitted]
    warnings = [] if law == "paper" else [f"refits of law {law}"]
    block = identify.fixed_block(pd.DataFrame({"format": [target.fit_key.partition("/")[2]]}))
    for j, p in enumerate(names[1:], start=1):
        left_out = float(np.mean(~np.isfinite(est[:, j]))) if len(est) else 1.0
        on_bound = float(np.mean(np.isfinite(est[:, j]) & ~ok[:, j])) if len(est) else 0.0
        if p == "gamma_G" and block and g == block[1]:
            left_out = 0.0  # at its own block k holds the G term: nothing is left out
        if left_out:
            warnings.append(
                f"{p} left out as not identifiable in {100 * left_out:.0f}% of simulated fits "
                "and treated as 0 there (as predict does), so this interval is biased"
            )
        if on_bound:
            warnings.append(
                f"{p} on its bound (+-{GAMMA_BOUND:g} for an exponent) in {100 * on_bound:.0f}% of "
                "simulated fits"
            )
    return {
        "warnings": warnings,
        "target": target.label,
        "n_params": n,
        "tokens": d,
        "setting": target.fit_key,
        "law": law,
        "group_size": target.group_size,
        "delta": sim.interval(delta, truth),
        "qat_loss": sim.interval(qat, true_qat),
    }


def run_design(
    runs: pd.DataFrame,
    prior: sim.Prior,
    noise: float,
    n_sims: int,
    seed: int = 0,
    targets: list[sim.Target] | tuple[sim.Target, ...] = (),
    cell_noise: float = 0.0,
    select: bool = False,
) -> dict[str, Any]:
    """Simulate `n_sims` sweeps of `runs` and summarise what their fits would say; with
    `select`, also how often fit's law comparison picks the law the data were drawn from."""
    start = time.perf_counter()
    prior = sim.covering(prior, tuple(runs.loc[runs["scheme"] != "bf16", "fit_key"].unique()))
    truth = sim.true_losses(prior, runs)
    losses = sim.draw_losses(prior, runs, noise, n_sims, np.random.default_rng(seed), cell_noise)
    keys = runs.loc[runs["scheme"] != "bf16", "fit_key"].unique()
    laws = {key: prior.law(key) for key in keys}
    refits = sim.refit_many(runs, losses, truth, laws=laws, select=select)
    params = {"bf16": _param_rows(prior.base, refits.base, refits.base_ok, BASE_PARAMS)}
    for key, est in refits.delta.items():
        params[key] = _param_rows(prior.delta[key], est, refits.delta_ok[key], refits.names[key])
    held = runs["holdout"].to_numpy(bool)
    fixed = {}
    for key in refits.delta:
        block = identify.fixed_block(runs[runs["fit_key"] == key])
        if block:
            fixed[key] = identify.fixed_block_why(*block)
    return {
        "prior": {
            "source": prior.source,
            "notes": prior.notes,
            "warnings": prior.warnings,
            "laws": refits.laws,
        },
        "fixed_block": fixed,
        "selection": {
            key: selection_summary(prior.law(key), picks) for key, picks in refits.picks.items()
        },
        "noise": noise,
        "cell_noise": cell_noise,
        "sims": n_sims,
        "seed": seed,
        "grid": {
            "runs": len(runs),
            "fitted_runs": int((~held).sum()),
            "holdout_runs": int(held.sum()),
            "gpu_hours": float(runs["gpu_hours"].sum()),
            "fitted_gpu_hours": float(runs.loc[~held, "gpu_hours"].sum()),
        },
        "params": params,
        "targets": [target_intervals(t, refits, prior) for t in targets],
        "exact_refits": refits.exact_refits,
        "seconds": round(time.perf_counter() - start, 3),
    }


def selection_summary(truth: str, picks: list[str]) -> dict[str, Any]:
    """How often fit's selection picked each law; a hit is the true law or a law that contains
    it (formulas.DeltaLaw.nests: the levelling law contains the paper's, the paper's no_D)."""
    fitted = [p for p in picks if p not in ("none", "undecided")]
    shares = {
        name: float(np.mean([p == name for p in fitted])) if fitted else None for name in LAWS
    }
    hits = [p == truth or truth in LAWS[p].nests for p in fitted]
    return {
        "truth": truth,
        "sweeps": len(fitted),
        "undecided": sum(p == "undecided" for p in picks),  # nothing held out: paper by default
        "picks": shares,
        "hit_rate": float(np.mean(hits)) if fitted else None,
        "levelling_off_rate": float(np.mean([LAWS[p].levels_off for p in fitted]))
        if fitted
        else None,
        "hit": "the true law or a law that contains it",
    }


def format_design(res: dict[str, Any]) -> str:
    grid = res["grid"]
    lines = [
        f"design {res['sweep']}: {grid['runs']} runs ({grid['fitted_runs']} fitted, "
        f"{grid['holdout_runs']} held out), {grid['gpu_hours']:,.0f} GPU-hours "
        f"(fitted runs {grid['fitted_gpu_hours']:,.0f})"
        + (f"; dropped {', '.join(res['drops'])}" if res["drops"] else ""),
        f"prior {res['prior']['source']}"
        + (
            f" (laws: {', '.join(f'{k} {v}' for k, v in res['prior']['laws'].items() if v != 'paper')})"
            if any(v != "paper" for v in res["prior"].get("laws", {}).values())
            else ""
        )
        + f"; noise {format_number(res['noise'], digits=3)} per run"
        + (f" + {res['cell_noise']:g} per cell" if res["cell_noise"] else "")
        + f"; {res['sims']} simulated sweeps refitted as `fit` would in {res['seconds']:.1f} s",
        *[f"note: {n}" for n in res["prior"]["notes"]],
        *[f"warning: {w}" for w in res["prior"].get("warnings", [])],
        *[f"note: {key}: {why}" for key, why in res.get("fixed_block", {}).items()],
        "",
        f"{'setting':<18} {'param':<8} {'truth':>9} {'expected 95% interval':>26} "
        f"{'width':>9} {'identified':>10} {'left out':>8} {'excludes 0':>10}",
    ]
    for key, params in res["params"].items():
        for name, item in params.items():
            if key == "bf16" and name == "beta":
                continue  # tied to alpha
            ci = item["ci95"]
            span = f"[{format_number(ci[0])}, {format_number(ci[1])}]" if ci else "not identifiable"
            zero = ("yes" if item.get("excludes_zero") else "NO") if ci else "-"
            lines.append(
                f"{key:<18} {name:<8} {format_number(item['truth']):>9} {span:>26} {format_number(item['width'], digits=3):>9} "
                f"{100 * item['identified']:>9.0f}% {100 * item['left_out']:>7.0f}% {zero:>10}"
            )
    if res.get("selection"):
        lines += [
            "",
            "which law fit selects (held-out comparison, one-SE rule) over the simulated sweeps:",
        ]
        for key, item in res["selection"].items():
            shares = ", ".join(f"{name} {100 * v:.0f}%" for name, v in item["picks"].items() if v)
            if not item["sweeps"]:
                lines.append(
                    f"{key:<18} truth {item['truth']}: the grid holds out nothing for this "
                    "setting (the paper's law by default)"
                )
                continue
            lines.append(
                f"{key:<18} truth {item['truth']}: picks {shares or 'none'}; true law or one "
                f"containing it {100 * (item['hit_rate'] or 0):.0f}%, a levelling-off law "
                f"{100 * (item['levelling_off_rate'] or 0):.0f}% ({item['sweeps']} sweeps)"
            )
    for t in res["targets"]:
        lines.append("")
        for label in ("delta", "qat_loss"):
            item = t[label]
            ci = item["ci95"]
            lines.append(
                f"target {t['target']}: {label} truth {format_number(item['truth'])}, expected 95% interval "
                + (f"[{format_number(ci[0])}, {format_number(ci[1])}] (width {format_number(item['width'], digits=3)}, "
                   f"{100 * (item['rel_width'] or 0):.0f}% of the truth)" if ci else "none")
            )  # fmt: skip
        lines += [f"warning: {w}" for w in t["warnings"]]
    return "\n".join(lines)


def noise_level(value: float | None, default: float | None) -> float:
    noise = value if value is not None else (default or sim.DEFAULT_NOISE)
    if not 0 <= noise < 1:
        raise InputError(f"--noise {noise}: need 0 <= SD < 1 (a loss SD, e.g. 0.01)")
    return noise
