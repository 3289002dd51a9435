"""Simulated sweeps: every run's final loss drawn from a prior law plus noise, refitted in bulk.

The refit is `fit`'s estimator (pipeline.run_fit): held-out runs left out, BF16 twins paired on
(N cell, D cell, LR, seed), non-positive gaps excluded, the base law on the best LR per (N cell,
D cell, seed) with Huber 1e-3 on log residuals and alpha tied to beta, each delta law by Huber
regression in log space on the exponents identify.py keeps for that replicate's gaps, with its
threshold from the MAD of the OLS residuals and the gammas boxed to +-3. Only the solvers are
the fast ones fit already has: batched Levenberg-Marquardt for the base law
(bootstrap.base_lm_batch, warm-started at the noiseless fit) and fit.delta_start's box IRLS for
the delta law (the unique minimum of that convex problem in the box, the one lmfit refines).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.cells import snap
from qat_sweep.analysis.collect import TWIN_COLUMNS, InputError, twin_index
from qat_sweep.analysis.design.synth import Truth
from qat_sweep.analysis.law.base_fit import (
    BASE_BOUNDS,
    D_UNIT,
    N_UNIT,
    base_raw,
    fit_base,
    on_bound,
)
from qat_sweep.analysis.law.bootstrap import base_lm_batch
from qat_sweep.analysis.law.compare import select_sets
from qat_sweep.analysis.law.delta_fit import DELTA_COLUMNS, delta_start, fit_delta
from qat_sweep.analysis.law.formulas import (
    BASE_PARAMS,
    DELTA_PARAMS,
    LAWS,
    FittedLaw,
    Points,
    bf16_loss,
    delta_loss,
    group_value,
)
from qat_sweep.analysis.law.law_fit import base_of, engine_for

from qat_sweep.common import parse_count, progress, split_overrides
from qat_sweep.estimates.flops import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS
from qat_sweep.model.precision import BLOCK_FORMATS, base_format

BASE_F_SCALE = 1e-3  # pipeline.Settings.base_f_scale: what `fit` uses unless told otherwise
DEFAULT_NOISE = 0.01
GRID_COLUMNS = (
    "run_key", "subgrid", "model", "n_params", "hidden_size", "tokens", "scheme", "format",
    "group_size", "lr", "seed", "status", "gpu_hours", "holdout", "overrides",
)  # fmt: skip
DROP_KEYS = ("model", "tokens", "scheme", "format", "group_size", "subgrid", "lr", "seed")


# ---------------------------------------------------------------- the prior law


@dataclass
class Prior:
    """The law simulated data are drawn from: a base law and one delta law per setting (its
    name in `laws`, the paper's when absent; its parameters in `delta`)."""

    base: dict[str, float]
    delta: dict[str, dict[str, float]]
    source: str
    noise: float | None = None  # per-run loss noise implied by the prior fit's residuals
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what makes the prior itself doubtful
    laws: dict[str, str] = field(default_factory=dict)
    fitted: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # every law fit

    def law(self, key: str) -> str:
        return self.laws.get(key, "paper")

    def fitted_law(self, key: str) -> FittedLaw:
        return FittedLaw(LAWS[self.law(key)], self.delta[key], base_of(self.base))


def paper_prior() -> Prior:
    """Table 1 of the paper; FP4 W4A4 is not in it, so synth's FP4 law stands in (ours)."""
    return Prior(
        dict(paper.BASE),
        {**paper.TABLE1, "w4a4/fp4": Truth().delta["w4a4/fp4"]},
        "paper Table 1",
        notes=["w4a4/fp4 is not in the paper's Table 1: prior k=0.15, gamma_N=0.22, "
               "gamma_D=0.075, gamma_G=0.70 (ours)"],
    )  # fmt: skip


def load_prior(spec: str | None, law: str | None = None) -> Prior:
    """`paper` (default) or a fit directory / fit.json; settings a fit lacks come from paper.

    From a fit, each setting's delta law is the one the fit selected, or `law` where the fit
    could fit it."""
    if spec in (None, "", "paper"):
        prior = paper_prior()
        if law not in (None, "paper"):
            prior.notes.append(
                f"--law {law}: the paper prior has only the paper's law (use --truth {law})"
            )
        return prior
    path = Path(spec)
    path = path / "fit.json" if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"--prior {spec!r}: not 'paper', a fit directory or a fit.json")
    try:
        result = json.loads(path.read_text())
        base = result["base"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"--prior {path}: not a qat-sweep fit.json ({err})") from err
    if any(base["params"].get(p) is None for p in BASE_PARAMS):
        raise InputError(f"--prior {path}: its BF16 law is not identifiable; fit more BF16 runs")
    fallback = paper_prior()
    prior = Prior(dict(base["params"]), dict(fallback.delta), f"fit {path}")
    prior.warnings += bound_warnings("BF16 law", base)
    for key, fit in result.get("delta", {}).items():
        name = fit.get("law") or "paper"
        params = fit["params"]
        laws = fit.get("laws") or {}
        if law and law != name:
            entry = laws.get(law) or {}
            if entry.get("fitted"):
                name, params = law, entry["params"]
            else:
                prior.notes.append(
                    f"{key}: --law {law} not fitted ({entry.get('why', 'not in the fit')}): "
                    f"its selected law {name} instead"
                )
        prior.laws[key] = name
        prior.warnings += bound_warnings(f"{key} law {name}", laws.get(name) or fit)
        prior.fitted[key] = {
            n: {p: float(v or 0.0) for p, v in e["params"].items()}
            for n, e in laws.items()
            if e.get("fitted")
        }
        missing = [p for p, v in params.items() if v is None]
        prior.delta[key] = {p: float(v or 0.0) for p, v in params.items()}
        if missing:
            prior.notes.append(f"{key}: {', '.join(missing)} not identifiable in the prior fit: 0")
        prior.notes.append(f"{key}: law {name}")
    unfitted = sorted(set(fallback.delta) - set(result.get("delta", {})))
    if unfitted:
        prior.notes.append(f"not in the prior fit, taken from the paper: {', '.join(unfitted)}")
    noise = fit_noise(result, path.parent)
    if noise is not None:
        prior.noise = noise[0]
        prior.notes.append(f"noise {noise[0]:.3g} per run: {noise[1]}")
    return prior


def bound_warnings(label: str, fit: dict[str, Any]) -> list[str]:
    """A warning for the parameters a prior fit left on their bounds: there the bound, not the
    data, set the value, and every simulated sweep inherits it."""
    hits = [p for p in fit.get("bound_hits") or [] if fit["params"].get(p) is not None]
    if not hits:
        return []
    values = ", ".join(f"{p} = {fit['params'][p]:.3g}" for p in hits)
    return [
        f"the prior's {label} has {values} on its bound: the bound, not the data, set "
        f"{'it' if len(hits) == 1 else 'them'}, and every simulated sweep draws from that value"
    ]


ELEMENT_FORMAT = {"e2m1": "fp4", "int4": "int4"}


def stand_in(key: str) -> str | None:
    """The setting whose law a prior lends to ``key`` when it has none of its own: a block
    format takes its element type with per-group scales (mxfp4, nvfp4 -> fp4; mxint4,
    nvint4 -> int4), a rotated or otherwise labelled variant its plain format."""
    scheme, _, label = key.partition("/")
    fmt = base_format(label)
    if fmt in BLOCK_FORMATS:
        return f"{scheme}/{ELEMENT_FORMAT[BLOCK_FORMATS[fmt].element]}"
    return f"{scheme}/{fmt}" if fmt != label else None


def covering(prior: Prior, keys: list[str] | tuple[str, ...]) -> Prior:
    """The prior with a law for every setting of ``keys``, borrowed (stand_in) where it has
    none and said so in its notes: the neutral assumption (ours) that neither an 8-bit block
    scale nor a rotation changes delta beyond the element type's law at G = the block. Keys
    with no stand-in in the prior stay missing (true_losses names them)."""
    delta, notes = dict(prior.delta), list(prior.notes)
    laws, fitted = dict(prior.laws), dict(prior.fitted)
    borrowed: dict[str, list[str]] = {}
    for key in sorted(set(keys) - set(delta)):
        source = stand_in(key)
        if source in delta:
            delta[key] = dict(delta[source])
            if source in laws:  # the stand-in's law too, not only its parameters
                laws[key] = laws[source]
            if source in fitted:
                fitted[key] = fitted[source]
            borrowed.setdefault(source, []).append(key)
    for source, names in borrowed.items():
        notes.append(
            f"{', '.join(names)}: not in the prior; {source}'s law stands in (at G = the block "
            "for a block format): the assumption that neither the block scale nor the rotation "
            "changes delta (ours)"
        )
    return dataclasses.replace(prior, delta=delta, notes=notes, laws=laws, fitted=fitted)


def typical_loss(result: dict[str, Any], fit_dir: Path | None) -> tuple[float, str] | None:
    """The fit's typical BF16 loss and where it comes from: the median of its BF16 runs
    (runs.csv beside fit.json), else its BF16 law at the geometric centre of the fitted range."""
    path = fit_dir / "runs.csv" if fit_dir else None
    if path and path.is_file():
        runs = pd.read_csv(path, usecols=lambda c: c in ("scheme", "loss", "excluded"))
        keep = runs["scheme"].eq("bf16")
        if "excluded" in runs:
            keep &= runs["excluded"].isna()
        losses = runs.loc[keep, "loss"].dropna()
        if len(losses):
            return float(losses.median()), f"median of its {len(losses)} BF16 runs"
    base = result["base"]
    span = base.get("range") or {}
    if any(base["params"].get(p) is None for p in BASE_PARAMS) or not span:
        return None
    n, d = (float(np.sqrt(np.prod(span[c]))) for c in ("n_params", "tokens"))
    return float(bf16_loss(base["params"], n, d)), "its BF16 law at the fitted range's centre"


def fit_noise(result: dict[str, Any], fit_dir: Path | None = None) -> tuple[float, str] | None:
    """A run's loss noise implied by a fit, and how: its BF16 log-residual SD, scaled up for
    the parameters fitted (sqrt(n / (n - p))), times the typical BF16 loss of its data."""
    base = result["base"]
    sd, typical = base.get("resid_log_sd"), typical_loss(result, fit_dir)
    if not sd or typical is None:
        return None
    ident = base.get("identifiability") or {}
    n, p = ident.get("n_cells") or base.get("n_cells"), ident.get("n_params")
    dof = float(np.sqrt(n / (n - p))) if n and p and n > p else 1.0
    how = (
        f"the prior fit's BF16 log-residual SD {sd:.3g} x {dof:.3g} (for its {p} fitted "
        f"parameters) x typical loss {typical[0]:.4f} ({typical[1]})"
    )
    return float(sd) * dof * typical[0], how


# ---------------------------------------------------------------- the grid


def grid_runs(
    sweep: str,
    overrides: list[str] | None = None,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
) -> pd.DataFrame:
    """A sweep's planned runs as a table (one row per run, twins included) with GPU-hours."""
    from qat_sweep.model.presets import model_config_from
    from qat_sweep.sweep.plan import PlanError, plan_sweep

    try:
        planned = plan_sweep(sweep, overrides or [], strict=False)
    except PlanError as err:
        raise InputError(str(err)) from err
    rows = []
    for run in planned:
        row = run.row(mfu, peak_tflops)
        row["hidden_size"] = model_config_from(run.config["model"]).hidden_size
        row["holdout"] = bool(run.config["holdout"])  # plan's membership, as in the record
        rows.append({c: row[c] for c in GRID_COLUMNS})
    return with_coordinates(pd.DataFrame(rows))


def with_coordinates(runs: pd.DataFrame) -> pd.DataFrame:
    """Add G (the value inside log2 G), the (N, D) cells and fit_key, as collect.build_table does."""
    runs = runs.reset_index(drop=True).copy()
    runs["n_params"] = runs["n_params"].astype(float)
    runs["tokens"] = runs["tokens"].astype(float)
    runs["N_cell"], runs["D_cell"] = snap(runs["n_params"]), snap(runs["tokens"])
    runs["G"] = [
        group_value(g, h) for g, h in zip(runs["group_size"], runs["hidden_size"], strict=True)
    ]
    runs["fit_key"] = runs["scheme"] + "/" + runs["format"]
    return runs


def _matches(runs: pd.DataFrame, key: str, value: str) -> np.ndarray:
    if key == "tokens":
        return np.isclose(runs["tokens"], parse_count(value, key))
    if key in ("lr", "seed"):
        return np.isclose(runs[key].astype(float), float(value))
    return (runs[key].astype(str) == value).to_numpy()


def _fields(flag: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The `key=value` words of a --target or --drop string, keys from `allowed`."""
    try:
        fields, rest = split_overrides(text.split(), set(allowed))
    except InputError as err:
        raise InputError(f"{flag} {text!r}: {err}") from None
    if rest:
        raise InputError(f"{flag} {text!r}: {rest[0]!r} is not key=value")
    return fields


def drop_runs(runs: pd.DataFrame, drops: list[str]) -> pd.DataFrame:
    """Remove runs matching every `key=value` of a drop ("tokens=100B", "model=74M scheme=w4a16")."""
    keep = np.ones(len(runs), bool)
    for drop in drops:
        hit = np.ones(len(runs), bool)
        for key, value in _fields("--drop", drop, DROP_KEYS).items():
            hit &= _matches(runs, key, value)
        if not hit.any():
            raise InputError(f"--drop {drop!r} matches no run of this sweep")
        keep &= ~hit
    return runs[keep].reset_index(drop=True)


# ---------------------------------------------------------------- drawing data


def true_losses(prior: Prior, runs: pd.DataFrame) -> np.ndarray:
    """Noiseless final loss of every run under the prior."""
    loss = bf16_loss(prior.base, runs["n_params"], runs["tokens"])
    for key in runs.loc[runs["scheme"] != "bf16", "fit_key"].unique():
        if key not in prior.delta:
            raise InputError(
                f"the prior ({prior.source}) has no delta law for {key}; "
                f"it has: {', '.join(sorted(prior.delta))}"
            )
        mask = (runs["fit_key"] == key).to_numpy()
        part = runs[mask]
        loss[mask] += prior.fitted_law(key).delta(Points.of(part))
    return loss


def draw_losses(
    prior: Prior,
    runs: pd.DataFrame,
    noise: float,
    n_sims: int,
    rng: np.random.Generator,
    cell_noise: float = 0.0,
) -> np.ndarray:
    """(n_sims, n_runs) final losses: truth + per-run noise + noise shared by an (N, D, LR) cell."""
    base = true_losses(prior, runs)
    out = base + rng.normal(0.0, noise, (n_sims, len(runs)))
    if cell_noise > 0:
        codes = pd.factorize(pd.Series(list(zip(*(runs[c] for c in TWIN_COLUMNS), strict=True))))[0]
        out += rng.normal(0.0, cell_noise, (n_sims, codes.max() + 1))[:, codes]
    return out


# ---------------------------------------------------------------- refitting many data sets


@dataclass
class Refits:
    """Estimates of every simulated sweep: raw parameters in BASE_PARAMS order, and per setting
    its law's parameters (`names`: DELTA_PARAMS for the paper's law).

    `*_ok` marks estimates fit would report as identified: in the design, finite, off the bounds.
    `picks`: per setting, the law fit's selection picks in each sweep (when asked for).
    """

    base: np.ndarray
    base_ok: np.ndarray
    delta: dict[str, np.ndarray]
    delta_ok: dict[str, np.ndarray]
    exact_refits: int = 0  # replicates that needed fit_delta itself
    laws: dict[str, str] = field(default_factory=dict)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    picks: dict[str, list[str]] = field(default_factory=dict)


def _base_refits(runs: pd.DataFrame, fitted: np.ndarray, losses: np.ndarray, truth: np.ndarray):
    """Base law of every replicate on the best-LR BF16 run per (N cell, D cell, seed)."""
    n_sims = losses.shape[0]
    est, ok = np.full((n_sims, len(BASE_PARAMS)), np.nan), np.zeros((n_sims, 5), bool)
    bf16 = runs[fitted & (runs["scheme"] == "bf16").to_numpy()]
    if bf16.empty:
        return est, ok
    # pipeline._best_lr groups by cells; a plan gives every run of a cell the same N and D
    cells = bf16.groupby(["N_cell", "D_cell", "seed"], sort=True).indices
    cell_rows = [bf16.index[idx] for idx in cells.values()]
    best = np.stack([losses[:, rows].min(axis=1) for rows in cell_rows], axis=1)
    frame = pd.DataFrame(list(cells), columns=["n_params", "tokens", "seed"])
    frame["loss"] = [truth[rows].min() for rows in cell_rows]
    start = fit_base(frame, f_scale=BASE_F_SCALE)
    if "theta" not in start.internal:
        return est, ok
    x_n, x_d = frame["n_params"].to_numpy() / N_UNIT, frame["tokens"].to_numpy() / D_UNIT
    theta = base_lm_batch(
        start.internal["theta"], x_n, x_d, np.log(best), np.ones_like(best), True, BASE_F_SCALE
    )
    est = base_raw(theta, True)
    hit = np.vectorize(on_bound)
    names = ("A", "B", "E", "alpha")
    bound = np.column_stack(
        [hit(theta[:, j], BASE_BOUNDS[n][0]) | hit(theta[:, j], BASE_BOUNDS[n][1])
         for j, n in enumerate(names)]
    )  # fmt: skip
    # BASE_PARAMS order is A, alpha, B, beta, E; beta is alpha (tied)
    ok = np.isfinite(est) & ~bound[:, [0, 3, 1, 3, 2]]
    return est, ok


def _delta_replicate(
    part: pd.DataFrame, y: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, bool, float, frozenset[str]]:
    """One replicate's delta law as fit_delta fits it (fit.delta_start: the exponents
    identify.py keeps for these gaps, the box IRLS optimum lmfit refines), NaN for exponents
    left out; fit_delta itself where the IRLS has no finite answer. Also its Huber threshold
    and the exponents left out (what the replicate's other laws share)."""
    rows = part if mask.all() else part[mask].reset_index(drop=True)
    design, _, _, _, scale, coef = delta_start(rows, y[mask], None, DELTA_COLUMNS)
    dropped = frozenset(c for c in DELTA_COLUMNS if c not in design.columns)
    if np.all(np.isfinite(coef)):
        raw = design.to_raw(coef)[0]
        raw[[DELTA_PARAMS.index(c) for c in DELTA_COLUMNS if c not in design.columns]] = np.nan
        return raw, False, scale, dropped
    fit = fit_delta(rows.assign(delta=np.exp(y[mask])), "sim")
    est = np.array([np.nan if v is None else v for v in fit.params.values()])
    return est, True, fit.f_scale, frozenset(fit.not_identifiable)


def refit_many(
    runs: pd.DataFrame,
    losses: np.ndarray,
    start_losses: np.ndarray | None = None,
    laws: dict[str, str] | None = None,
    select: bool = False,
) -> Refits:
    """Refit every row of `losses` (n_sims, n_runs) as `fit` would fit that sweep's records.

    Each setting is fitted with its law in `laws` (default the paper's); with `select`, fit's
    law comparison also runs on every sweep and `picks` records the law it selects. The base
    law's warm start is fit_base on `start_losses` (the noiseless truth; default the mean over
    replicates).
    """
    runs = runs.reset_index(drop=True)  # row i is column i of losses
    fitted = ~runs["holdout"].to_numpy(bool)
    start = losses.mean(axis=0) if start_losses is None else start_losses
    base, base_ok = _base_refits(runs, fitted, losses, start)
    twins = twin_index(runs)
    out = Refits(base, base_ok, {}, {})
    quant = fitted & (twins >= 0)
    n_sims = losses.shape[0]
    for key in sorted(runs.loc[quant, "fit_key"].unique()):
        rows = np.flatnonzero(quant & (runs["fit_key"] == key).to_numpy())
        part = runs.iloc[rows].reset_index(drop=True)
        gaps = losses[:, rows] - losses[:, twins[rows]]
        est = np.full((n_sims, len(DELTA_PARAMS)), np.nan)
        scale = np.full(n_sims, np.nan)
        dropped: list[frozenset[str]] = [frozenset(DELTA_COLUMNS)] * n_sims
        for s in progress(range(n_sims), f"simulated fits of {key}", unit="sweep"):
            mask = gaps[s] > 0
            if mask.sum() < 2:  # pipeline skips settings with fewer than two paired runs
                continue
            y = np.log(np.where(mask, gaps[s], 1.0))
            est[s], exact, scale[s], dropped[s] = _delta_replicate(part, y, mask)
            out.exact_refits += exact
        name = (laws or {}).get(key, "paper")
        valid = gaps > 0
        y_all = np.log(np.where(valid, gaps, 1.0))
        usable = valid.sum(axis=1) >= 2
        if name != "paper":
            est = _law_refits(part, LAWS[name], y_all, valid, scale, dropped, base, usable)
        out.laws[key] = name
        out.names[key] = LAWS[name].params(_groups(part) if LAWS[name].per_group else ())
        out.delta[key], out.delta_ok[key] = est, _identified(LAWS[name], out.names[key], est)
        if select:
            picks = np.array(["none"] * n_sims, dtype=object)
            idx = np.flatnonzero(usable)
            base_rows = {"A": base[idx, 0:1], "alpha": base[idx, 1:2]}
            if not np.isfinite(base[idx, :2]).any():
                base_rows = None
            picks[idx] = select_sets(
                part, y_all[idx], valid[idx], scale[idx], [dropped[i] for i in idx], base_rows
            )
            out.picks[key] = list(picks)
    return out


def _groups(part: pd.DataFrame) -> tuple[str, ...]:
    from qat_sweep.analysis.law.law_fit import data_groups

    return data_groups(part)


def _identified(law: Any, names: tuple[str, ...], est: np.ndarray) -> np.ndarray:
    """Finite and off its box: a gamma off +-3, a nonlinear parameter off its bounds."""
    ok = np.isfinite(est)
    bounds = {t.param: t.bound for t in law.terms(groups_of_names(names)) if t.bound}
    for j, name in enumerate(names):
        value = np.nan_to_num(est[:, j])
        if name in bounds:
            ok[:, j] &= ~np.vectorize(on_bound)(np.abs(value), bounds[name])
        for p in law.nonlinear:
            if p.param == name:
                hit = np.vectorize(on_bound)
                ok[:, j] &= ~(hit(value, p.lo) | hit(value, p.hi))
    return ok


def groups_of_names(names: tuple[str, ...]) -> tuple[str, ...]:
    from qat_sweep.analysis.law.formulas import groups_of

    return groups_of(dict.fromkeys(names))


def _law_refits(
    part: pd.DataFrame,
    law: Any,
    y: np.ndarray,
    valid: np.ndarray,
    scale: np.ndarray,
    dropped: list[frozenset[str]],
    base: np.ndarray,
    usable: np.ndarray,
) -> np.ndarray:
    """Any other law refitted to every sweep (law_fit.Engine, fresh: profiled over its grid),
    with the exponents each sweep's paper law leaves out left out (NaN) and each sweep's own
    BF16 law for a law on it."""
    groups = _groups(part) if law.per_group else ()
    names = law.params(groups)
    est = np.full((len(y), len(names)), np.nan)
    n_cell, d_cell = snap(part["n_params"]), snap(part["tokens"])
    ratios = len(set(np.round(np.log(d_cell / n_cell), 6)))
    by_set: dict[frozenset[str], list[int]] = {}
    for s in np.flatnonzero(usable):
        by_set.setdefault(dropped[s], []).append(int(s))
    for out_set, members in by_set.items():
        if law.nonlinear and ("gamma_D" in out_set or ratios < 3):
            continue  # law_fit.why_not_fitted: nothing to level off, or too few D/N
        idx = np.array(members)
        base_rows = None
        if law.uses_base:
            base_rows = {"A": base[idx, 0:1], "alpha": base[idx, 1:2]}
        point = {"A": 1.0, "alpha": 0.3} if law.uses_base else None  # per-row bases replace it
        engine = engine_for(law, part, out_set, point)
        weights = valid[idx].astype(float)
        if base_rows is not None:
            weights[~np.isfinite(base[idx, :2]).all(axis=1)] = 0.0
        theta = engine.fit(None, weights, scale[idx], base_rows=base_rows, y_rows=y[idx])
        _, values = engine.to_params(theta, base_rows)
        for name in out_set & set(names):
            values[:, names.index(name)] = np.nan
        est[idx] = values
    return est


# ---------------------------------------------------------------- summaries


def interval(samples: np.ndarray, truth: float | None) -> dict[str, Any]:
    """Expected 95% interval of an estimate: the central 95% of its simulated values."""
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return {"truth": truth, "median": None, "ci95": None, "width": None, "rel_width": None}
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {
        "truth": truth,
        "median": float(np.median(samples)),
        "ci95": [float(lo), float(hi)],
        "width": float(hi - lo),
        "rel_width": float((hi - lo) / abs(truth)) if truth else None,
        "excludes_zero": bool(lo > 0 or hi < 0),
    }


def predicted_delta(
    estimates: np.ndarray,
    n: float,
    d: float,
    g: float,
    law: str = "paper",
    names: tuple[str, ...] = DELTA_PARAMS,
    group: Any = None,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """delta at one point from each row of estimates (columns `names` of `law`); unidentified
    exponents count as 0 (as predict does); `base`: each row's BF16 law for a law on it."""
    if law == "paper":
        params = dict(zip(DELTA_PARAMS, np.nan_to_num(estimates, nan=0.0).T, strict=True))
        params["k"] = np.where(np.isfinite(estimates[:, 0]), estimates[:, 0], np.nan)
        return delta_loss(params, n, d, g)
    fitted = np.isfinite(estimates[:, 0])
    cols = {p: np.nan_to_num(estimates[:, j : j + 1], nan=0.0) for j, p in enumerate(names)}
    rows_base = None if base is None else {"A": base[:, 0:1], "alpha": base[:, 1:2]}
    out = FittedLaw(LAWS[law], cols, rows_base).delta(Points.at(n, d, g, group))[:, 0]
    return np.where(fitted, out, np.nan)


# ---------------------------------------------------------------- targets

TARGET_KEYS = ("model", "n_params", "hidden_size", "tokens", "scheme", "format", "group_size")
SENSIBLE = {"n_params": (1e4, 1e13), "tokens": (1e5, 1e15)}  # beyond these no law is meant


@dataclass(frozen=True)
class Target:
    """One prediction a researcher cares about: delta of a setting at (N, D, G)."""

    n_params: float
    hidden_size: float | None
    tokens: float
    fit_key: str
    group_size: int | str
    label: str

    @property
    def G(self) -> float:
        return group_value(self.group_size, self.hidden_size)


def parse_target(text: str) -> Target:
    """'model=973M tokens=200B scheme=w4a4 format=int4 group_size=128' -> Target (InputError)."""
    fields = _fields("--target", text, TARGET_KEYS)
    try:
        n_params = parse_count(fields["n_params"], "n_params") if "n_params" in fields else None
        hidden = (
            parse_count(fields["hidden_size"], "hidden_size") if "hidden_size" in fields else None
        )
        tokens = parse_count(fields["tokens"], "tokens") if "tokens" in fields else None
    except InputError as err:
        raise InputError(f"--target {text!r}: {err}") from None
    if "model" in fields:
        from qat_sweep.model.presets import load_preset

        try:
            preset = load_preset(fields["model"])
        except ValueError as err:
            raise InputError(f"--target {text!r}: {err}") from err
        n_params = n_params or float(preset.n_params)
        hidden = hidden or float(preset.hidden_size)
    if n_params is None or tokens is None:
        raise InputError(f"--target {text!r}: give model= (or n_params=) and tokens=")
    for name, value in (("n_params", n_params), ("tokens", tokens)):
        lo, hi = SENSIBLE[name]
        if not lo <= value <= hi:
            raise InputError(
                f"--target {text!r}: {name}={value:.3g} is outside any sensible range [{lo:.0e}, {hi:.0e}]"
            )
    scheme = fields.get("scheme", "w4a4").lower()
    if scheme == "bf16":
        raise InputError(f"--target {text!r}: targets are quantized settings (delta), not bf16")
    fmt = fields.get("format", "int4").lower()
    block = BLOCK_FORMATS[base_format(fmt)].block if base_format(fmt) in BLOCK_FORMATS else None
    group = fields.get("group_size", str(block or 128))
    if block and group != str(block):
        raise InputError(
            f"--target {text!r}: group_size={group} with format {fmt}: its block of {block} is "
            f"part of the format; allowed: {block} (or leave group_size out)"
        )
    if group != "channel":
        try:
            group = int(group)
        except ValueError as err:
            raise InputError(
                f"--target {text!r}: group_size must be an integer or channel"
            ) from err
    g = group_value(group, hidden)
    if not np.isfinite(g) or not 1 < g <= 1e6:
        raise InputError(
            f"--target {text!r}: group_size={group} gives G={g}; need 1 < G <= 1e6 "
            "(channel needs model= or hidden_size=)"
        )
    key = f"{scheme}/{fmt}"
    label = f"{fields.get('model', f'{n_params:.3g}')}/{fields['tokens']} {key} G={group}"
    return Target(float(n_params), hidden, float(tokens), key, group, label)
