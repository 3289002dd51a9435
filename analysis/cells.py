"""(N, D) cells formed with a relative tolerance, so measured or rounded counts of one model size
or token budget (74.31M and 74.33M) group as the same cell.

Values sorted on a log scale join one cell while each is within CELL_RTOL of the previous one;
the cell is represented by its median. The paper's grids step N and D by about 2x, far beyond
the tolerance. The fits themselves use each run's own N and D; cells only decide grouping
(twins, replicates, bootstrap resampling units, held-out slices).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CELL_RTOL = 0.01


def snap(values: object, rtol: float = CELL_RTOL) -> np.ndarray:
    """Each value -> the median of its tolerance cluster (NaN for non-finite or non-positive)."""
    v = np.asarray(values, float).ravel()
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v) & (v > 0)
    if not ok.any():
        return out
    order = np.argsort(v[ok], kind="stable")
    ordered = v[ok][order]
    labels = np.concatenate([[0], np.cumsum(ordered[1:] > ordered[:-1] * (1 + rtol))])
    medians = np.array([np.median(ordered[labels == k]) for k in range(labels[-1] + 1)])
    snapped = np.empty(len(ordered))
    snapped[order] = medians[labels]
    out[ok] = snapped
    return out


def cell_values(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N cell, D cell) per row: the table's N_cell/D_cell columns, or snapped on the fly."""
    if {"N_cell", "D_cell"} <= set(frame.columns):
        return frame["N_cell"].to_numpy(float), frame["D_cell"].to_numpy(float)
    return snap(frame["n_params"]), snap(frame["tokens"])


def cell_codes(frame: pd.DataFrame) -> np.ndarray:
    """One integer per distinct (N, D) cell."""
    n, d = cell_values(frame)
    return pd.factorize(pd.Series(list(zip(n, d, strict=True)), dtype=object))[0]


def count_cells(frame: pd.DataFrame) -> int:
    return len(set(cell_codes(frame))) if len(frame) else 0
