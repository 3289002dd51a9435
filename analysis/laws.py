"""The unified QAT scaling law (PAPER.md section 1) as plain vectorised functions.

Kept free of fitting code so predictions, plots and tests all evaluate the same formulas.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
BASE_PARAMS = ("A", "alpha", "B", "beta", "E")
DELTA_PARAMS = ("k", "gamma_N", "gamma_D", "gamma_G")


def group_value(group_size: object, hidden_size: float | None) -> float:
    """G inside log2(G): the group size, or the reduction dimension (hidden size) per channel."""
    if group_size is None or (isinstance(group_size, float) and np.isnan(group_size)):
        return float("nan")
    if str(group_size) == "channel":
        return float(hidden_size) if hidden_size is not None else float("nan")
    return float(group_size)


def bf16_loss(params: Mapping[str, float], n: ArrayLike, d: ArrayLike) -> np.ndarray:
    """Chinchilla law L = A/N^alpha + B/D^beta + E with raw N and D."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"] + params["E"]


def delta_loss(params: Mapping[str, float], n: ArrayLike, d: ArrayLike, g: ArrayLike) -> np.ndarray:
    """Quantization error delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N (raw units)."""
    n, d, g = (np.asarray(x, float) for x in (n, d, g))
    return np.exp(log_delta(params, n, d, g))


def log_delta(params: Mapping[str, float], n: ArrayLike, d: ArrayLike, g: ArrayLike) -> np.ndarray:
    """log delta; a missing (not identifiable) exponent contributes nothing."""
    n, d, g = (np.asarray(x, float) for x in (n, d, g))
    out = np.log(params["k"]) + np.zeros(np.broadcast(n, d, g).shape)
    if params.get("gamma_D") is not None:
        out = out + params["gamma_D"] * np.log(d)
    if params.get("gamma_G") is not None:
        out = out + params["gamma_G"] * np.log(np.log2(g))
    if params.get("gamma_N") is not None:
        out = out - params["gamma_N"] * np.log(n)
    return out


def qat_loss(
    base: Mapping[str, float], delta: Mapping[str, float], n: ArrayLike, d: ArrayLike, g: ArrayLike
) -> np.ndarray:
    """L_qat = L_bf16(N, D) + delta(N, D, G)."""
    return bf16_loss(base, n, d) + delta_loss(delta, n, d, g)


def effective_multiplier(base: Mapping[str, float], n: ArrayLike, delta: ArrayLike) -> np.ndarray:
    """eff = (A / (A + delta N^alpha))^(1/alpha): the BF16 model fraction a QAT model is worth."""
    n, delta = np.asarray(n, float), np.asarray(delta, float)
    a, alpha = base["A"], base["alpha"]
    return (a / (a + delta * n**alpha)) ** (1.0 / alpha)
