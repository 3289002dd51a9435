"""Identifiability of the law on the grid actually fitted, and outlier listing.

Real sweeps often tie N, D and G together (tokens per parameter held near 100, G = hidden size).
A least-squares fit then still returns numbers, with intervals that span orders of magnitude.
Here the design in (log N, log D, log log2 G) is examined before any interval is drawn: an
exponent whose regressor has too little variation of its own, or whose standard error from the
design and the robust residual scale is too large, is reported as not identifiable and the law
is refitted without it (fixed at 0, so the exponents it moves with absorb its effect).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import cell_values

from qat_sweep.model.precision import BLOCK_FORMATS, base_format

V_MIN = 0.05  # independent share of a regressor's spread below this: collinear (VIF > 400)
SE_MAX = 0.3  # an exponent's standard error above this: its 95% interval spans +-0.6 or more
OUTLIER_Z = 3.5  # |robust residual| > 3.5 robust sd (MAD x 1.4826): listed as an outlier
DROP_ORDER = ("gamma_D", "gamma_G", "gamma_N")  # when two move together, keep N, then G
AXIS = {"gamma_N": "N", "gamma_D": "D", "gamma_G": "G"}
SEPARATE_BY = {
    "gamma_N": "runs at several model sizes N with D and G held fixed would separate gamma_N",
    "gamma_D": "runs at other tokens per parameter for the same model size (e.g. D/N = 20 and "
    "400 beside 100) would separate gamma_D",
    "gamma_G": "runs with several group sizes at one model size and token count (e.g. G = 32, "
    "128 and channel) would separate gamma_G",
}


def fixed_block(rows: pd.DataFrame) -> tuple[str, int] | None:
    """(format, block) when the rows are all one block format (MX/NV): its G is its block,
    so gamma_G cannot be separated within it whatever the grid (None otherwise)."""
    if "format" not in rows.columns or rows.empty:
        return None
    formats = {base_format(str(f)) for f in rows["format"]}
    fmt = formats.pop() if len(formats) == 1 else None
    return (fmt, BLOCK_FORMATS[fmt].block) if fmt in BLOCK_FORMATS else None


def fixed_block_why(fmt: str, block: int) -> str:
    return (
        f"G is {fmt}'s block ({block}), part of the format: gamma_G cannot be separated within "
        f"it; k holds (log2 {block})^gamma_G"
    )


FIXED_BLOCK_REMEDY = (
    "No runs of this format can separate it (its block is fixed); compare formats at their "
    "blocks instead (decide's best format under a bits-per-weight budget)"
)


def separate_by(name: str) -> str:
    """The sentence saying which runs would separate an exponent, capitalised."""
    text = SEPARATE_BY.get(name, "")
    return text[:1].upper() + text[1:]


def remedy(name: str, entry: dict[str, Any]) -> str:
    """What would identify an exponent: other runs when the grid ties it to another axis, more
    seeds or a wider range when the grid varies it but the runs' noise leaves it loose; nothing
    when the format fixes it (a block format's G)."""
    if entry.get("fixed_by_format"):
        return FIXED_BLOCK_REMEDY
    if entry.get("independent_variation", 0.0) < V_MIN:
        return separate_by(name)
    axis = AXIS.get(name, name)
    return (
        f"The grid already varies {axis} on its own; the runs' noise leaves {name} loose: "
        f"more seeds per cell or a wider range of {axis} would pin it down"
    )


def robust_sd(resid: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if resid.size else 0.0


def condition(columns: np.ndarray) -> float:
    """Condition number of the centred, unit-norm design columns (1 = orthogonal)."""
    centred = columns - columns.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    if columns.shape[1] == 0:
        return 1.0
    if np.any(norms < 1e-12):
        return float("inf")
    s = np.linalg.svd(centred / norms, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


def independent_variation(columns: np.ndarray, j: int) -> tuple[float, int | None]:
    """Share of column j's centred spread the other columns cannot explain, and the column that
    explains most of the rest (None if j is on its own)."""
    centred = columns - columns.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    if norms[j] < 1e-12:
        return 0.0, None
    unit = centred / np.where(norms > 1e-12, norms, 1.0)
    others = [i for i in range(columns.shape[1]) if i != j and norms[i] >= 1e-12]
    if not others:
        return 1.0, None
    coef = np.linalg.lstsq(unit[:, others], unit[:, j], rcond=None)[0]
    v = float(np.linalg.norm(unit[:, j] - unit[:, others] @ coef))
    return v, others[int(np.argmax(np.abs(coef)))]


def design_points(rows: pd.DataFrame) -> int:
    """Distinct (N cell, D cell, G) points: what an exact fit would have to pass through."""
    n, d = cell_values(rows)
    g = rows["G"].to_numpy(float) if "G" in rows.columns else np.ones(len(rows))
    return len(set(zip(n, d, g, strict=True)))


def exponent_report(
    columns: dict[str, np.ndarray], terms: tuple[str, ...], y: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per exponent: independent variation, standard error, partner, separable or not."""
    names = list(terms)
    raw = np.column_stack([columns[c] for c in names]) if names else np.zeros((len(y), 0))
    x = np.column_stack([np.ones(len(y)), raw - raw.mean(axis=0)])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    dof = len(y) - x.shape[1]
    sigma = robust_sd(x @ coef - y) if dof > 0 else 0.0
    gram_inv = np.linalg.pinv(x.T @ x)
    out = {}
    for j, name in enumerate(names):
        v, partner = independent_variation(raw, j)
        se = float(sigma * np.sqrt(max(gram_inv[j + 1, j + 1], 0.0))) if v > 0 else float("inf")
        out[name] = {
            "independent_variation": v,
            "std_error": se,
            "moves_with": names[partner] if partner is not None else None,
            "separable": bool(v >= V_MIN and se <= SE_MAX),
        }
    return out


def worst_exponent(report: dict[str, dict[str, Any]]) -> str | None:
    """The exponent to drop first: the least separable; near ties go by DROP_ORDER."""
    bad = {
        name: max(e["std_error"] / SE_MAX, V_MIN / max(e["independent_variation"], 1e-300))
        for name, e in report.items()
        if not e["separable"]
    }
    if not bad:
        return None
    worst = max(bad.values())
    close = [n for n, b in bad.items() if b >= 0.9 * worst]
    return min(close, key=lambda n: DROP_ORDER.index(n) if n in DROP_ORDER else len(DROP_ORDER))


def why_not(name: str, entry: dict[str, Any]) -> str:
    """One clause saying why an exponent is not identifiable."""
    partner = entry.get("moves_with")
    if entry["independent_variation"] < V_MIN:
        with_what = f" with {AXIS.get(partner, partner)}" if partner else ""
        return (
            f"{AXIS.get(name, name)} moves{with_what} in this grid (only "
            f"{100 * entry['independent_variation']:.1f}% of its spread is its own, need "
            f"{100 * V_MIN:.0f}%)"
        )
    return (
        f"its standard error from this design would be {entry['std_error']:.2g} (limit {SE_MAX:g})"
    )


def outliers(
    resid: np.ndarray, run_keys: list[str], what: str = "log residual"
) -> list[dict[str, Any]]:
    """Runs whose robust residual exceeds OUTLIER_Z robust sd; kept in the fit (Huber-limited)."""
    sd = robust_sd(resid)
    if resid.size < 4 or sd <= 0:
        return []
    z = (resid - np.median(resid)) / sd
    return [
        {"run_key": key, what: float(r), "robust_z": float(zi)}
        for key, r, zi in zip(run_keys, resid, z, strict=True)
        if abs(zi) > OUTLIER_Z
    ]


def run_keys(rows: pd.DataFrame) -> list[str]:
    if "run_key" in rows.columns:
        return [str(k) for k in rows["run_key"]]
    return [f"row{i}" for i in rows.index]
