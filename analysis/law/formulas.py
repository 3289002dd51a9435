"""The unified QAT scaling law (docs/science.md) as plain vectorised functions.

Kept free of fitting code so predictions, plots and tests all evaluate the same formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
BASE_PARAMS = ("A", "alpha", "B", "beta", "E")
DELTA_PARAMS = ("k", "gamma_N", "gamma_D", "gamma_G")
LOSS_FLOOR = 1e-12  # log of a non-positive trial loss


def group_value(group_size: object, hidden_size: float | None) -> float:
    """G inside log2(G): the group size, or the reduction dimension (hidden size) per channel."""
    if group_size is None or (isinstance(group_size, float) and np.isnan(group_size)):
        return float("nan")
    if str(group_size) == "channel":
        return float(hidden_size) if hidden_size is not None else float("nan")
    return float(group_size)


def chinchilla(a, alpha, b, beta, e, n: ArrayLike, d: ArrayLike) -> np.ndarray:
    """A / N^alpha + B / D^beta + E in any units; parameters broadcast (draws) against points."""
    return a * np.asarray(n, float) ** -alpha + b * np.asarray(d, float) ** -beta + e


def log_chinchilla(a, alpha, b, beta, e, n: ArrayLike, d: ArrayLike) -> np.ndarray:
    """log L, the form the BF16 law is fitted in (floored: a trial step may make L <= 0)."""
    return np.log(np.maximum(chinchilla(a, alpha, b, beta, e, n, d), LOSS_FLOOR))


def bf16_loss(params: Mapping[str, Any], n: ArrayLike, d: ArrayLike) -> np.ndarray:
    """Chinchilla law L = A/N^alpha + B/D^beta + E with raw N and D (params may hold draws)."""
    p = params
    return chinchilla(p["A"], p["alpha"], p["B"], p["beta"], p["E"], n, d)


def log_bf16_loss(params: Mapping[str, Any], n: ArrayLike, d: ArrayLike) -> np.ndarray:
    p = params
    return log_chinchilla(p["A"], p["alpha"], p["B"], p["beta"], p["E"], n, d)


# The fitters' parameter vector: theta = [A, B, E, alpha(, beta)] in normalised units (N and D
# divided by fixed units), one row per problem; beta = alpha when the law is tied.


def log_bf16_theta(theta: np.ndarray, x_n: ArrayLike, x_d: ArrayLike, tied: bool) -> np.ndarray:
    """log L for rows of theta (batched: one row per problem, one column per point)."""
    theta = np.atleast_2d(theta)
    alpha = theta[:, 3:4]
    beta = alpha if tied else theta[:, 4:5]
    return log_chinchilla(theta[:, 0:1], alpha, theta[:, 1:2], beta, theta[:, 2:3], x_n, x_d)


def log_bf16_jacobian(
    theta: np.ndarray, x_n: np.ndarray, x_d: np.ndarray, tied: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(log L, d log L / d theta) for rows of theta: shapes (rows, points), (rows, points, p)."""
    alpha = theta[:, 3:4]
    beta = alpha if tied else theta[:, 4:5]
    term_n, term_d = x_n**-alpha, x_d**-beta
    pred = np.maximum(theta[:, 0:1] * term_n + theta[:, 1:2] * term_d + theta[:, 2:3], LOSS_FLOOR)
    d_alpha = -theta[:, 0:1] * term_n * np.log(x_n)
    d_beta = -theta[:, 1:2] * term_d * np.log(x_d)
    cols = [term_n, term_d, np.ones_like(pred), d_alpha + d_beta if tied else d_alpha]
    if not tied:
        cols.append(d_beta)
    return np.log(pred), np.stack(cols, axis=-1) / pred[..., None]


def delta_loss(params: Mapping[str, float], n: ArrayLike, d: ArrayLike, g: ArrayLike) -> np.ndarray:
    """Quantization error delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N (raw units)."""
    n, d, g = (np.asarray(x, float) for x in (n, d, g))
    return np.exp(log_delta(params, n, d, g))


def delta_regressors(n: ArrayLike, d: ArrayLike, g: ArrayLike) -> dict[str, np.ndarray]:
    """The delta law is linear in log space: log delta = log k + sum of gamma x regressor."""
    n, d, g = (np.asarray(x, float) for x in (n, d, g))
    return {"gamma_D": np.log(d), "gamma_G": np.log(np.log2(g)), "gamma_N": -np.log(n)}


def log_delta(params: Mapping[str, Any], n: ArrayLike, d: ArrayLike, g: ArrayLike) -> np.ndarray:
    """log delta; a missing (not identifiable) exponent contributes nothing."""
    n, d, g = (np.asarray(x, float) for x in (n, d, g))
    out = np.log(params["k"]) + np.zeros(np.broadcast(n, d, g).shape)
    for name, regressor in delta_regressors(n, d, g).items():
        if params.get(name) is not None:
            out = out + params[name] * regressor
    return out


def qat_loss(
    base: Mapping[str, float], delta: Mapping[str, float], n: ArrayLike, d: ArrayLike, g: ArrayLike
) -> np.ndarray:
    """L_qat = L_bf16(N, D) + delta(N, D, G)."""
    return bf16_loss(base, n, d) + delta_loss(delta, n, d, g)


def effective_multiplier(base: Mapping[str, Any], n: ArrayLike, delta: ArrayLike) -> np.ndarray:
    """eff = (A / (A + delta N^alpha))^(1/alpha): the BF16 model fraction a QAT model is worth.

    NaN where a draw has A = 0 (no multiplier), without a warning."""
    n, delta = np.asarray(n, float), np.asarray(delta, float)
    a, alpha = base["A"], base["alpha"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a / (a + delta * n**alpha)) ** (1.0 / alpha)
