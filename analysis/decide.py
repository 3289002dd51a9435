"""`qat-sweep decide`: the decisions people make from a fitted law, each with a bootstrap interval.

For a model size and token budget: the group size that minimises loss under a memory budget in
bits per weight (4 + scale bits / G; a block format has only its block, at its own scale bits),
the fitted format and G that minimise it under the same budget (each encoding counted with its
own scale bits: precision.bits_per_weight), the token count at which delta exceeds a tolerance,
the INT4-vs-FP4 crossover group size where both formats are fitted, and the effective parameter
multiplier. Every quantity is computed per bootstrap draw of the saved fit (bootstrap.npz), so
its interval comes from the same resamples as the fit's own; extrapolations are flagged as
`predict` flags them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.law.formulas import FittedLaw, Points, group_value
from qat_sweep.analysis.predict import (
    EXTRAPOLATION_WARN,
    SavedFit,
    _fit_caveats,
    delta_law,
    predict_point,
)

from qat_sweep.common import format_number
from qat_sweep.model.precision import BLOCK_FORMATS, base_format, bits_per_weight

GROUP_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024)
DEFAULT_BITS, DEFAULT_SCALE_BITS, DEFAULT_TOLERANCE, DEFAULT_G = 4.25, 16, 0.05, 128
REPORT_POINT_7B = (7e9, 140e9, 4096)  # 7B at 20 tokens per parameter, hidden 4096


@dataclass(frozen=True)
class Question:
    """Where the decisions are asked: model size, tokens, setting, and the budgets."""

    n_params: float
    tokens: float
    hidden_size: float | None
    fit_key: str
    group_size: int | str = DEFAULT_G
    bits: float = DEFAULT_BITS
    scale_bits: float = DEFAULT_SCALE_BITS
    tolerance: float = DEFAULT_TOLERANCE
    law: str | None = None  # a delta law of the fit (default: the one it selected)


def _interval(values: np.ndarray) -> list[float | None] | None:
    """95% percentile interval; an end beyond every finite draw (never happens) is None."""
    values = values[~np.isnan(values)]
    if not values.size:
        return None
    ends = np.percentile(np.where(np.isfinite(values), values, 1e308), [2.5, 97.5])
    return [float(v) if v < 1e300 else None for v in ends]


@dataclass(frozen=True)
class LawRows:
    """A delta law at one or more parameter rows (the point, or the bootstrap draws)."""

    law: FittedLaw
    rows: int
    name: str = "paper"

    def __len__(self) -> int:
        return self.rows

    def head(self, size: int) -> LawRows:
        """The first `size` rows (draws of two settings are paired by resample)."""
        cut = {k: v[:size] for k, v in self.law.params.items()}
        base = self.law.base
        if base is not None and np.ndim(base.get("A")) == 2:
            base = {k: v[:size] for k, v in base.items()}
        return LawRows(FittedLaw(self.law.law, cut, base), min(size, self.rows), self.name)

    def column(self, name: str) -> np.ndarray:
        return np.broadcast_to(self.law.params[name], (self.rows, 1))[:, 0]


def _draws(saved: SavedFit, fit_key: str, law: str | None = None) -> tuple[LawRows, LawRows]:
    """(point, draws) of the setting's delta law (its selection, or `law`); an exponent fit
    left out contributes nothing.

    No draws (none saved, or a fit that cannot give intervals) is an empty set of rows, never
    the point alone: decisions then have no interval rather than a zero-width one."""
    chosen = delta_law(saved, fit_key, law)
    point = {k: np.array([[v if v is not None else 0.0]]) for k, v in chosen.point.params.items()}
    draws = chosen.draws if chosen.draws is not None else np.zeros((0, len(chosen.names)))
    draws = draws[np.isfinite(draws).all(axis=1)]  # singular resamples are NaN
    return (
        LawRows(FittedLaw(chosen.point.law, point, chosen.point.base), 1, chosen.name),
        LawRows(chosen.at_draws(draws), len(draws), chosen.name),
    )


def _caveats(saved: SavedFit, keys: tuple[str, ...], draws: int) -> list[str]:
    """The fits' interval caveats (identify.py / bootstrap flags), as predict words them."""
    out = [c for k in keys for c in _fit_caveats(f"delta law {k}", saved.result["delta"][k])]
    if not draws:
        out.append("no bootstrap interval (none drawn, or the fit cannot give one)")  # as predict
    return out


def unidentified(
    saved: SavedFit, fit_key: str, names: tuple[str, ...], law: str | None = None
) -> dict[str, str]:
    """The exponents among `names` that the setting's delta law left out as not identifiable
    (identify.py), each with the fit's reason; a block format's gamma_G is not among them (its
    block is its only G, and k holds that term)."""
    fit = saved.result["delta"][fit_key]
    params = delta_law(saved, fit_key, law).point.params
    exponents = (fit.get("identifiability") or {}).get("exponents", {})
    return {
        name: exponents.get(name, {}).get("why", "left out of the fit")
        for name in names
        if name in params
        and params[name] is None
        and not exponents.get(name, {}).get("fixed_by_format")
    }


def no_winner(depends: dict[str, dict[str, str]], what: str) -> tuple[str, list[str]]:
    """Why a decision gives no answer (the exponents it turns on that the fit cannot identify:
    the bootstrap keeps them at 0, so a share of draws would only echo that), and one warning
    per exponent with identify.py's reason."""
    named = "; ".join(f"{key} {', '.join(names)}" for key, names in depends.items() if names)
    reasons = [
        f"{key} {name} not identifiable: {why}"
        for key, names in depends.items()
        for name, why in names.items()
    ]
    return f"{what} turns on exponents this fit cannot identify ({named})", reasons


def _log_delta(rows: LawRows, n: float, d: float, g, labels=None) -> np.ndarray:
    """log delta for each row of parameters at each G (group labels for per-G laws):
    (rows, len(g))."""
    g = np.asarray(g, float)
    if not len(rows):
        return np.zeros((0, len(g)))
    labels = [str(int(v)) for v in g] if labels is None else labels
    out = rows.law.log_delta(Points.at(n, d, g, np.array(labels, dtype=object)))
    return np.array(np.broadcast_to(out, (len(rows), len(g))))


def _range_warnings(saved: SavedFit, column: str, value: float, label: str) -> list[str]:
    lo, hi = saved.result["base"].get("range", {}).get(column, [None, None])
    if hi and np.isfinite(value) and value > EXTRAPOLATION_WARN * hi:
        ratio = format_number(value / hi, digits=3)
        return [f"{label} {value:.3g} is {ratio}x the largest fitted {column} ({hi:.3g})"]
    if lo and np.isfinite(value) and value < lo / EXTRAPOLATION_WARN:
        return [f"{label} {value:.3g} is below a tenth of the smallest fitted {column} ({lo:.3g})"]
    return []


def format_of(fit_key: str) -> str:
    """The format of a fit key (``w4a4/mxfp4-had`` -> ``mxfp4``)."""
    return base_format(fit_key.partition("/")[2])


def group_options(fit_key: str, hidden: float | None) -> list[int | str]:
    """The G a setting can take: a block format only its block, else the candidates below the
    hidden size and per-channel."""
    fmt = format_of(fit_key)
    if fmt in BLOCK_FORMATS:
        return [BLOCK_FORMATS[fmt].block]
    options: list[int | str] = [g for g in GROUP_CANDIDATES if hidden is None or g < hidden]
    return options + (["channel"] if hidden else [])


def best_group(saved: SavedFit, q: Question) -> dict[str, Any]:
    """The G minimising delta (hence loss) among those with 4 + scale_bits / G <= bits (a block
    format: its block, if its own scale bits fit)."""
    hidden = q.hidden_size
    fmt = format_of(q.fit_key)
    options = group_options(q.fit_key, hidden)
    values = np.array([group_value(g, hidden) for g in options])
    bits = np.array([bits_per_weight(fmt, v, q.scale_bits) for v in values])
    fits = bits <= q.bits + 1e-12
    if not fits.any():
        if fmt in BLOCK_FORMATS:
            raise InputError(
                f"{fmt} stores {bits[0]:.3f} bits per weight (4 + 8 / {options[0]}), more than "
                f"--bits {q.bits:g}; allowed: --bits >= {bits[0]:.3f}"
            )
        raise InputError(
            f"no group size fits {q.bits:g} bits per weight with {q.scale_bits:g}-bit scales "
            f"(per-channel needs {bits.min():.3f}); allowed: --bits > 4"
        )
    allowed = [g for g, ok in zip(options, fits, strict=True) if ok]
    depends = unidentified(saved, q.fit_key, ("gamma_G",), q.law) if len(allowed) > 1 else {}
    if depends:
        pred = predict_point(
            saved, q.n_params, q.tokens, q.fit_key, q.group_size, q.hidden_size, law=q.law
        )
        why, reasons = no_winner({q.fit_key: depends}, "the choice of G")
        return {
            "bits_budget": q.bits, "scale_bits": q.scale_bits,
            "allowed": [str(g) for g in allowed], "group_size": None, "bits_per_weight": None,
            "share_of_draws": None, "draw_shares": {}, "undecided": why,
            "delta": pred["delta"], "qat_loss": pred["qat_loss"],
            "warnings": reasons + pred["warnings"],
        }  # fmt: skip
    point, draws = _draws(saved, q.fit_key, q.law)
    grid = values[fits]
    at_point = _log_delta(point, q.n_params, q.tokens, grid, [str(g) for g in allowed])[0]
    if not np.isfinite(at_point).any():
        raise InputError(
            f"law {point.name} of {q.fit_key} has no value at the group sizes that fit "
            f"{q.bits:g} bits per weight ({', '.join(map(str, allowed))})"
        )
    unknown = [str(g) for g, v in zip(allowed, at_point, strict=True) if not np.isfinite(v)]
    allowed = [g for g, v in zip(allowed, at_point, strict=True) if np.isfinite(v)]
    grid, at_point = grid[np.isfinite(at_point)], at_point[np.isfinite(at_point)]
    choice = allowed[int(np.argmin(at_point))]
    labels = [str(g) for g in allowed]
    picks = np.argmin(_log_delta(draws, q.n_params, q.tokens, grid, labels), axis=1)
    shares = {
        str(g): float(np.mean(picks == i)) if len(draws) else None for i, g in enumerate(allowed)
    }
    pred = predict_point(saved, q.n_params, q.tokens, q.fit_key, choice, hidden, law=q.law)
    if unknown:
        pred["warnings"].append(
            f"law {point.name} has no value at G = {', '.join(unknown)} (not fitted): left out"
        )
    return {
        "bits_budget": q.bits,
        "scale_bits": q.scale_bits,
        "allowed": [str(g) for g in allowed],
        "group_size": str(choice),
        "bits_per_weight": float(bits_per_weight(fmt, group_value(choice, hidden), q.scale_bits)),
        "share_of_draws": shares[str(choice)],
        "draw_shares": shares,
        "delta": pred["delta"],
        "qat_loss": pred["qat_loss"],
        "warnings": pred["warnings"],
    }


def best_format(saved: SavedFit, q: Question) -> dict[str, Any]:
    """Among every fitted setting of the question's scheme (formats, rotations) and the G each
    can take, the one with the least delta at (N, D) whose storage fits the budget: per-group
    formats 4 + scale_bits / G, MX 4 + 8/32, NV 4 + 8/16 (its per-tensor FP32 scale adds
    32 / elements of the tensor, under 1e-4 bits per weight for a real layer: left out)."""
    scheme, hidden = q.fit_key.split("/")[0], q.hidden_size
    keys = [
        key
        for key, fit in saved.result["delta"].items()
        # a setting whose selected law was fitted (its params: that law's, not always k)
        if key.split("/")[0] == scheme and any(v is not None for v in fit["params"].values())
    ]
    candidates: list[tuple[str, int | str, float]] = []
    for key in keys:
        for g in group_options(key, hidden):
            bits = bits_per_weight(format_of(key), group_value(g, hidden), q.scale_bits)
            if bits <= q.bits + 1e-12:
                candidates.append((key, g, float(bits)))
    if not candidates:
        return {"available": False, "missing": f"no fitted {scheme} setting fits {q.bits:g} bits"}
    # each setting under its own selected law: a law forced with --law may not fit the others
    fitted = {k: _draws(saved, k) for k in dict.fromkeys(c[0] for c in candidates)}
    size = min(len(d) for _, d in fitted.values())
    points, draws = [], []
    for key, g, _ in candidates:
        point, rows = fitted[key]
        g_value, label = [group_value(g, hidden)], [str(g)]
        points.append(float(np.exp(_log_delta(point, q.n_params, q.tokens, g_value, label))[0, 0]))
        draws.append(
            np.exp(_log_delta(rows.head(size), q.n_params, q.tokens, g_value, label))[:, 0]
        )
    # A per-G law (eff_per_G) has no value at a G it was not fitted at: such a candidate is out.
    unknown = [
        f"{k} G={gc}"
        for (k, gc, _), v in zip(candidates, points, strict=True)
        if not np.isfinite(v)
    ]
    keep = [i for i, v in enumerate(points) if np.isfinite(v)]
    if not keep:
        return {
            "available": False,
            "missing": f"no fitted {scheme} law has a value within {q.bits:g} bits",
        }
    candidates, points, draws = ([seq[i] for i in keep] for seq in (candidates, points, draws))
    settings = list(dict.fromkeys(c[0] for c in candidates))
    # one setting: only its G term separates the candidates; several: every exponent of each
    exponents = ("gamma_G",) if len(settings) == 1 else ("gamma_N", "gamma_D", "gamma_G")
    depends = {key: unidentified(saved, key, exponents) for key in settings}
    if len(candidates) > 1 and any(depends.values()):
        why, reasons = no_winner(depends, "the choice")
        return {"available": False, "missing": why, "warnings": reasons}
    choice = int(np.argmin(points))
    picks = np.argmin(np.stack(draws, axis=1), axis=1) if size else np.array([], int)
    warnings = (
        [f"left out, their law has no value at that G: {', '.join(unknown)}"] if unknown else []
    )
    for key in fitted:
        fit = saved.result["delta"][key]
        if "gamma_G" in fit.get("not_identifiable", []) and format_of(key) not in BLOCK_FORMATS:
            warnings.append(
                f"{key}: gamma_G not identified, so its delta is taken the same at every G"
            )
    warnings += _caveats(saved, tuple(fitted), size)
    key, g, bits = candidates[choice]
    return {
        "available": True,
        "bits_budget": q.bits,
        "setting": key,
        "group_size": str(g),
        "bits_per_weight": bits,
        "delta": points[choice],
        "share_of_draws": float(np.mean(picks == choice)) if size else None,
        "candidates": [
            {
                "setting": k,
                "group_size": str(gc),
                "bits_per_weight": b,
                "delta": v,
                "ci95": _interval(d),
            }
            for (k, gc, b), v, d in zip(candidates, points, draws, strict=True)
        ],
        "warnings": warnings,
    }


def tokens_to_tolerance(saved: SavedFit, q: Question) -> dict[str, Any]:
    """D at which delta(N, D, G) reaches the tolerance: D = (tol N^gN / (k log2(G)^gG))^(1/gD)
    for the paper's law; for any other law the first D where it does, found on a grid in log D
    and refined by bisection (never: delta stays below the tolerance up to 1e18 tokens)."""
    g = group_value(q.group_size, q.hidden_size)
    label = [str(q.group_size)]
    point, draws = _draws(saved, q.fit_key, q.law)
    depends = unidentified(saved, q.fit_key, ("gamma_D",), q.law)
    if depends:
        why, reasons = no_winner({q.fit_key: depends}, "the answer")
        return {
            "tolerance": q.tolerance, "group_size": str(q.group_size), "law": point.name,
            "tokens": None, "tokens_per_param": None, "ci95": None, "undecided": why,
            "warnings": reasons + _caveats(saved, (q.fit_key,), len(draws)),
        }  # fmt: skip

    def solve(rows: LawRows) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        if rows.name == "paper":
            rest = (
                np.log(q.tolerance) - _log_delta(rows, q.n_params, 1.0, [g], label)[:, 0]
            )  # D = 1
            gamma_d = np.broadcast_to(rows.law.params["gamma_D"], (len(rows), 1))[:, 0]
            with np.errstate(divide="ignore", invalid="ignore"):
                log_d = np.where(gamma_d > 0, rest / gamma_d, np.inf)  # gD <= 0: never
            return np.exp(np.minimum(log_d, 700.0))
        return _first_crossing(
            lambda log_d: _log_delta(rows, q.n_params, np.exp(log_d)[:, None], [g], label)[:, 0]
            - np.log(q.tolerance),
            np.log(1e3), np.log(1e18), len(rows),
        )  # fmt: skip

    value = float(solve(point)[0])
    boot = solve(draws)
    warnings = (
        _range_warnings(saved, "tokens", value, "tokens at the tolerance") if value < 1e300 else []
    )
    warnings += _caveats(saved, (q.fit_key,), len(draws))
    never = float(np.mean(~np.isfinite(boot) | (boot > 1e300))) if len(boot) else 0.0
    if never:
        warnings.append(
            f"in {100 * never:.0f}% of draws delta does not reach it (up to 1e18 tokens)"
        )
    if not np.isfinite(value) and point.name != "paper":
        warnings.append(f"law {point.name}: delta does not reach the tolerance up to 1e18 tokens")
    return {
        "tolerance": q.tolerance,
        "group_size": str(q.group_size),
        "law": point.name,
        "tokens": value if value < 1e300 else None,
        "tokens_per_param": value / q.n_params if value < 1e300 else None,
        "ci95": _interval(np.where(boot > 1e300, np.inf, boot)),
        "warnings": warnings,
    }


def _first_crossing(f, lo: float, hi: float, rows: int, steps: int = 200) -> np.ndarray:
    """exp(x) of the first x in [lo, hi] where f (vectorised over rows) turns >= 0; inf where
    it never does, exp(lo) where it already is."""
    xs = np.linspace(lo, hi, steps)
    values = np.column_stack([f(np.full(rows, x)) for x in xs])
    above = values >= 0
    first = np.where(above.any(axis=1), above.argmax(axis=1), -1)
    out = np.full(rows, np.inf)
    out[first == 0] = np.exp(lo)
    inside = np.flatnonzero(first > 0)
    if inside.size:
        a, b = xs[first[inside] - 1], xs[first[inside]]
        for _ in range(50):
            mid = 0.5 * (a + b)
            up = f_rows(f, mid, inside, rows) >= 0
            a, b = np.where(up, a, mid), np.where(up, mid, b)
        out[inside] = np.exp(0.5 * (a + b))
    return out


def f_rows(f, x: np.ndarray, rows: np.ndarray, total: int) -> np.ndarray:
    """f at a different x per row (only `rows` matter)."""
    full = np.zeros(total)
    full[rows] = x
    return f(full)[rows]


def crossover(saved: SavedFit, q: Question) -> dict[str, Any]:
    """G at which INT4 and FP4 delta are equal at (N, D), where both formats are fitted."""
    scheme = q.fit_key.split("/")[0]
    keys = (f"{scheme}/int4", f"{scheme}/fp4")
    missing = [k for k in keys if k not in saved.result["delta"]]
    if missing:
        return {"available": False, "missing": f"no delta fit for {', '.join(missing)}"}
    # the crossing G turns on both gamma_G; its place at (N, D) on the other exponents too
    depends = {k: unidentified(saved, k, ("gamma_N", "gamma_D", "gamma_G"), q.law) for k in keys}
    if any(depends.values()):
        why, reasons = no_winner(depends, "the crossover")
        return {"available": False, "missing": why, "warnings": reasons}
    (p_int, d_int), (p_fp, d_fp) = (_draws(saved, k, q.law) for k in keys)
    size = min(len(d_int), len(d_fp))
    per_group = [p.name for p in (p_int, p_fp) if p.law.law.per_group]
    if per_group:
        return {
            "available": False,
            "missing": f"law {per_group[0]} keeps one value per fitted group size: no crossover "
            "between them",
        }

    def solve(a: LawRows, b: LawRows) -> np.ndarray:
        if not len(a):
            return np.zeros(0)
        if a.name == b.name == "paper":
            # log delta_int - log delta_fp = c + dgG * log log2 G: zero at log log2 G = -c / dgG
            c = _log_delta(a, q.n_params, q.tokens, [2.0])[:, 0]  # G = 2: log log2 G = 0
            c -= _log_delta(b, q.n_params, q.tokens, [2.0])[:, 0]
            slope = a.column("gamma_G") - b.column("gamma_G")
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                return np.exp2(np.exp(np.clip(-c / slope, -50, 50)))
        # other laws: the first sign change of the log ratio on a grid of G, interpolated
        xs = np.geomspace(2.0, 1e6, 400)
        diff = _log_delta(a, q.n_params, q.tokens, xs) - _log_delta(b, q.n_params, q.tokens, xs)
        change = np.signbit(diff[:, 1:]) != np.signbit(diff[:, :-1])
        first = np.where(change.any(axis=1), change.argmax(axis=1), -1)
        out = np.full(len(a), np.inf)
        at = np.flatnonzero(first >= 0)
        j = first[at]
        lx = np.log(np.log2(xs))
        d0, d1 = diff[at, j], diff[at, j + 1]
        out[at] = np.exp2(np.exp(lx[j] + (lx[j + 1] - lx[j]) * d0 / (d0 - d1)))
        return out

    value = float(solve(p_int, p_fp)[0])
    boot = solve(d_int.head(size), d_fp.head(size))
    boot[boot > 1e6] = np.inf  # beyond any real group size: no crossover in that draw
    g = group_value(q.group_size, q.hidden_size)
    label = [str(q.group_size)]
    diff_point = np.exp(_log_delta(p_int, q.n_params, q.tokens, [g], label)) - np.exp(
        _log_delta(p_fp, q.n_params, q.tokens, [g], label)
    )
    diff = np.exp(_log_delta(d_int.head(size), q.n_params, q.tokens, [g], label)) - np.exp(
        _log_delta(d_fp.head(size), q.n_params, q.tokens, [g], label)
    )
    if p_int.name == p_fp.name == "paper":
        int4_finer = (p_int.column("gamma_G")[0] - p_fp.column("gamma_G")[0]) > 0
    else:
        ends = _log_delta(p_int, q.n_params, q.tokens, [2.0, 1e6]) - _log_delta(
            p_fp, q.n_params, q.tokens, [2.0, 1e6]
        )
        int4_finer = bool(ends[0, 1] > ends[0, 0])
    warnings = (
        [f"laws: {keys[0]} {p_int.name}, {keys[1]} {p_fp.name}"] if p_int.name != p_fp.name else []
    )
    warnings += _caveats(saved, keys, size)
    if not 2 <= value <= 1e6:
        warnings.append("no crossover between G = 2 and 1e6: one format is better throughout")
    return {
        "available": True,
        "group_size": value if 2 <= value <= 1e6 else None,
        "ci95": _interval(boot),
        "better_below": "int4" if int4_finer else "fp4",
        "int4_minus_fp4_at_G": {
            "group_size": str(q.group_size),
            "value": float(diff_point[0, 0]),
            "ci95": _interval(diff[:, 0]),
        },
        "warnings": warnings,
    }


def decisions(saved: SavedFit, q: Question) -> dict[str, Any]:
    """All four decisions at one question."""
    if q.fit_key not in saved.result["delta"]:
        raise InputError(
            f"no delta fit for {q.fit_key}; fitted: {', '.join(saved.result['delta']) or 'none'}"
        )
    if not 0 < q.tolerance < 10:
        raise InputError(f"--tolerance {q.tolerance}: need a loss gap between 0 and 10")
    if format_of(q.fit_key) in BLOCK_FORMATS:  # its only G, whatever the question's default
        q = dataclasses.replace(q, group_size=BLOCK_FORMATS[format_of(q.fit_key)].block)
    pred = predict_point(
        saved, q.n_params, q.tokens, q.fit_key, q.group_size, q.hidden_size, law=q.law
    )
    return {
        "n_params": q.n_params,
        "tokens": q.tokens,
        "setting": q.fit_key,
        "law": pred["law"],
        "law_source": pred["law_source"],
        "best_group_size": best_group(saved, q),
        "best_format": best_format(saved, q),
        "tokens_to_tolerance": tokens_to_tolerance(saved, q),
        "int4_vs_fp4": crossover(saved, q),
        "eff_multiplier": {
            "group_size": str(q.group_size),
            **pred["eff_multiplier"],
            "warnings": pred["warnings"],
        },
    }


def report_decisions(outcome: Any) -> list[dict[str, Any]]:
    """Decisions for the report: every fully identified setting (a block format: but for its
    gamma_G) at the largest fitted (N, D) and at 7B / 140B tokens (an extrapolation, flagged)."""
    from qat_sweep.analysis.pipeline import bootstrap_arrays

    res = outcome.result
    if res["base"]["params"].get("A") is None:
        return []
    saved = SavedFit(res, bootstrap_arrays(outcome))
    table = outcome.table
    n_max, d_max = res["base"]["range"]["n_params"][1], res["base"]["range"]["tokens"][1]
    hidden = table.loc[table["n_params"] == n_max, "hidden_size"].dropna()
    points = [(n_max, d_max, float(hidden.iloc[0]) if len(hidden) else None), REPORT_POINT_7B]
    rows = []
    for key, fit in res["delta"].items():
        block = format_of(key) in BLOCK_FORMATS  # its gamma_G is never identified: k holds it
        if key.endswith("/fp4") or any(
            v is None for p, v in fit["params"].items() if not (block and p == "gamma_G")
        ):
            continue
        for n, d, h in points:
            try:
                rows.append(decisions(saved, Question(n, d, h, key)))
            except InputError:  # e.g. a per-channel point without a hidden size: skip it
                continue
    return rows
