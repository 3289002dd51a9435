"""Which BF16 points enter the Chinchilla (base) fit, as the paper's Appendix C chooses them.

The paper fits its BF16 law on 145M-2.8B runs plus public OLMo-2-7B and -13B checkpoints (at
6.5B and 12.7B non-embedding parameters) "to improve extrapolation". `--base-models LO..HI`
keeps the sweep's BF16 runs whose N lies in a range; `--extra-bf16 FILE.csv` adds points
measured elsewhere, each with the source it came from. Neither changes the BF16 twins: a BF16
run outside the range still gives its quantized runs their delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from qat_sweep.analysis.cells import CELL_RTOL, snap

from qat_sweep.common import InputError, format_count, parse_count

EXTRA_COLUMNS = ("model", "n_params", "tokens", "loss", "source")
RANGE_EXAMPLE = "145M..2.8B (model names of the sweep or counts; either end may be left open)"


@dataclass(frozen=True)
class ModelRange:
    """Non-embedding N from `low` to `high` (inclusive, within the cells' tolerance)."""

    text: str
    low: float
    high: float

    def holds(self, n_params: np.ndarray) -> np.ndarray:
        n = np.asarray(n_params, float)
        return (n >= self.low * (1 - CELL_RTOL)) & (n <= self.high * (1 + CELL_RTOL))


def _end(text: str, models: dict[str, float], whole: str) -> float:
    """A model name of the table (its N) or a count such as 2.8B."""
    if text in models:
        return models[text]
    try:
        return parse_count(text, "--base-models")
    except InputError:
        known = ", ".join(sorted(models, key=models.__getitem__)) or "none"
        raise InputError(
            f"--base-models {whole!r}: {text!r} is neither a model of the BF16 runs ({known}) nor "
            f"a count; expected e.g. {RANGE_EXAMPLE}"
        ) from None


def parse_range(text: str, bf16: pd.DataFrame) -> ModelRange:
    """`LO..HI` against the BF16 runs' model names (each name stands for its median N)."""
    low_text, sep, high_text = text.partition("..")
    if not sep or not (low_text.strip() or high_text.strip()):
        raise InputError(f"--base-models {text!r}: expected LO..HI, e.g. {RANGE_EXAMPLE}")
    models = bf16.groupby("model")["n_params"].median().to_dict() if len(bf16) else {}
    low = _end(low_text.strip(), models, text) if low_text.strip() else 0.0
    high = _end(high_text.strip(), models, text) if high_text.strip() else np.inf
    if low > high:
        raise InputError(
            f"--base-models {text!r}: the low end ({format_count(low)}) is above the high end "
            f"({format_count(high)})"
        )
    return ModelRange(text, low, high)


def select_base_runs(bf16: pd.DataFrame, text: str | None) -> tuple[pd.DataFrame, str | None]:
    """The BF16 runs inside `--base-models` and a note on those left out (None: all kept)."""
    if not text:
        return bf16, None
    chosen = parse_range(text, bf16)
    inside = chosen.holds(bf16["n_params"].to_numpy())
    if not inside.any():
        sizes = ", ".join(sorted({format_count(n) for n in bf16["n_params"]}, key=parse_count))
        raise InputError(
            f"--base-models {text!r}: no BF16 run has N in this range (BF16 runs at N = "
            f"{sizes or 'none'})"
        )
    left = bf16[~inside]
    note = None
    if len(left):
        models = ", ".join(sorted(set(map(str, left["model"]))))
        note = (
            f"--base-models {text}: {len(left)} BF16 runs outside the range ({models}) left out "
            "of the base fit; they remain the twins of their quantized runs"
        )
    return bf16[inside], note


def read_extra_bf16(path: Path) -> pd.DataFrame:
    """External BF16 points (model, n_params, tokens, loss, source), checked row by row."""
    where = f"--extra-bf16 {path}"
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    try:
        raw = pd.read_csv(path, dtype={"model": str, "source": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: cannot read it as CSV ({err})") from err
    missing = [c for c in EXTRA_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(
            f"{where}: lacks column(s) {', '.join(missing)}; needs {', '.join(EXTRA_COLUMNS)}"
        )
    if raw.empty:
        raise InputError(f"{where}: no rows")
    problems = []
    for i, row in raw.iterrows():
        line = int(str(i)) + 2  # the header is line 1
        for column in ("n_params", "tokens", "loss"):
            value = pd.to_numeric(row[column], errors="coerce")
            if not (np.isfinite(value) and value > 0):
                problems.append(f"line {line}: {column}={row[column]} must be a number > 0")
        for column in ("model", "source"):
            if not isinstance(row[column], str) or not row[column].strip():
                problems.append(f"line {line}: {column} is empty (say which model / where from)")
    if problems:
        raise InputError(f"{where}: " + "; ".join(problems[:10]))
    points = raw[list(EXTRA_COLUMNS)].copy()
    for column in ("n_params", "tokens", "loss"):
        points[column] = points[column].astype(float)
    return points


def with_extra(bf16: pd.DataFrame, points: pd.DataFrame | None) -> pd.DataFrame:
    """The base fit's rows: the chosen BF16 runs, then the external points (run_key
    `extra:<model>`, never best-LR filtered), with the (N, D) cells formed over all of them."""
    if points is None or points.empty:
        return bf16
    rows = points.assign(run_key=[f"extra:{m}" for m in points["model"]], scheme="bf16", seed=0)
    both = pd.concat([bf16.assign(source=""), rows], ignore_index=True)
    both["N_cell"], both["D_cell"] = snap(both["n_params"]), snap(both["tokens"])
    return both
