"""The unified QAT scaling law (docs/science.md) as plain vectorised functions.

Kept free of fitting code so predictions, plots and tests all evaluate the same formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


# What G stands for per channel (`fit --channel-g`): the hidden size (ours, the default), or
# the reduction dimension of each quantized linear, hidden for qkv/o/FC1 and FFN for FC2.
CHANNEL_G = ("hidden", "reduction")


def reduction_group(hidden_size: float, ffn_size: float, kv_dim: float) -> float:
    """G per channel as the layers' reduction dimensions, one number per run: their geometric
    mean weighted by each linear's weight count (qkv, o and FC1 reduce over the hidden size,
    FC2 over the FFN size), i.e. the G a quantized weight sees on average in log G."""
    d, f, kv = float(hidden_size), float(ffn_size), float(kv_dim)
    over_hidden = d * (d + 2 * kv) + d * d + 2 * f * d  # qkv, o, gate and up
    over_ffn = f * d  # down_proj (FC2)
    return float(
        np.exp((over_hidden * np.log(d) + over_ffn * np.log(f)) / (over_hidden + over_ffn))
    )


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


# ---------------------------------------------------------------- candidate delta laws
#
# Every candidate law is one DeltaLaw below: log delta = offset + sum_j coef_j * feature_j, where
# a feature may depend on the law's nonlinear parameters (fitted in log space from a starting
# grid) and each coefficient maps to one reported parameter. The fitters (law/law_fit.py), the
# held-out comparison (law/compare.py), predict, decide, design and suggest all evaluate a law
# through `law_log_delta`, so adding a law means adding one definition to LAWS.

GAMMA_BOUND = 3.0  # |gamma| <= 3 in every law (delta_fit.py's box)
C_BOUNDS = (1.0, 1e5)  # the levelling law's bend, in tokens per parameter


def group_label(group_size: object) -> str:
    """'32' or 'channel': the granularity a per-G law keeps one parameter for."""
    if group_size is None or (isinstance(group_size, float) and np.isnan(group_size)):
        return ""
    text = str(group_size).strip()
    try:
        number = float(text)
    except ValueError:
        return text.lower()
    return str(int(number)) if np.isfinite(number) and number == int(number) else text


@dataclass(frozen=True)
class Points:
    """Where a law is evaluated: N, D, G (the value inside log2 G), the group label and the
    QAT start fraction f (the first f D tokens in BF16, the last (1 - f) D quantized)."""

    n: np.ndarray
    d: np.ndarray
    g: np.ndarray
    group: np.ndarray | None = None
    f: np.ndarray | None = None

    @classmethod
    def of(cls, rows: Any) -> Points:
        """From a table (n_params, tokens, G and, when present, group_size, start_fraction)."""
        group = f = None
        if "group_size" in rows:
            group = np.array([group_label(v) for v in rows["group_size"]], dtype=object)
        if "start_fraction" in rows:
            f = np.asarray(rows["start_fraction"], float)
        return cls(*(np.asarray(rows[c], float) for c in ("n_params", "tokens", "G")), group, f)

    @classmethod
    def at(
        cls, n: ArrayLike, d: ArrayLike, g: ArrayLike, group: object = None, f: ArrayLike = 0.0
    ) -> Points:
        n, d, g, f = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(x, float)) for x in (n, d, g, f))
        )
        labels = None
        if group is not None:
            labels = np.broadcast_to(
                np.array([group_label(v) for v in np.atleast_1d(np.asarray(group, object))],
                         dtype=object), n.shape)  # fmt: skip
        return cls(n, d, g, labels, f)

    @property
    def start(self) -> np.ndarray:
        """The start fraction of every point (0: QAT from step 0, the paper's protocol)."""
        return np.zeros_like(self.n) if self.f is None else np.broadcast_to(self.f, self.n.shape)


def _identity(value: Any, base: Mapping[str, Any] | None) -> Any:
    return value


@dataclass(frozen=True)
class Term:
    """One coefficient of log delta: the reported parameter it is, the regressor it multiplies
    (which may read the law's nonlinear parameters), the axis that must vary to identify it,
    its box (|coef| <= bound), and the map between coefficient and reported value."""

    param: str
    feature: Callable[[Points, Mapping[str, Any]], np.ndarray]
    axis: str | None = None
    bound: float | None = None
    to_param: Callable[[Any, Mapping[str, Any] | None], Any] = _identity
    from_param: Callable[[Any, Mapping[str, Any] | None], Any] = _identity


@dataclass(frozen=True)
class Nonlinear:
    """A parameter the features depend on, fitted in log space within [lo, hi] from a grid;
    left out (contributes nothing) where identify.py leaves the paper exponent `drop_with` out."""

    param: str
    lo: float
    hi: float
    grid: tuple[float, ...]
    axis: str
    drop_with: str | None = None


@dataclass(frozen=True)
class DeltaLaw:
    """One candidate law for delta (see LAWS)."""

    name: str
    formula: str
    terms_of: Callable[[tuple[str, ...]], tuple[Term, ...]]  # groups in the data -> terms
    nonlinear: tuple[Nonlinear, ...] = ()
    offset: Callable[[Points, Mapping[str, Any] | None], Any] | None = None
    # a further part of log delta that is not linear in any coefficient (reads the nonlinear
    # parameters; one left out is absent from the dict)
    shape: Callable[[Points, Mapping[str, Any]], Any] | None = None
    nests: tuple[str, ...] = ()  # laws that are special cases (or limits) of this one
    levels_off: bool = False  # delta stops growing with D at large D/N
    per_group: bool = False  # one parameter per granularity (group_size label)
    uses_base: bool = False  # needs the BF16 law's A and alpha
    pooled: bool = False  # compared where the settings of several QAT start fractions pool
    about: str = ""

    def terms(self, groups: tuple[str, ...] = ()) -> tuple[Term, ...]:
        return self.terms_of(tuple(groups))

    def params(self, groups: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Reported parameter names, in the order fit.json and bootstrap.npz keep them."""
        return tuple(t.param for t in self.terms(groups)) + tuple(p.param for p in self.nonlinear)

    def needs(self, groups: tuple[str, ...] = ()) -> dict[str, str]:
        """Which axis each parameter needs varied (or present) in the data."""
        out = {t.param: t.axis for t in self.terms(groups) if t.axis}
        out |= {p.param: p.axis for p in self.nonlinear}
        if self.uses_base:
            out["(A, alpha)"] = "an identified BF16 law"
        return out

    def describe(self, groups: tuple[str, ...] = ()) -> dict[str, Any]:
        return {
            "formula": self.formula,
            "params": list(self.params(groups)),
            "needs": self.needs(groups),
            "nests": list(self.nests),
            "levels_off": self.levels_off,
            "about": self.about,
        }


def _one(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    return np.ones_like(p.n)


def _log_d(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    return np.log(p.d)


def _log_d_levelled(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    """log D_eff with D_eff = D / (1 + D / (c N)): D below c N, c N above it."""
    return np.log(p.d) - np.log1p(p.d / (nl["c"] * p.n))


def _log_log2_g(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    return np.log(np.log2(p.g))


def _minus_log_n(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    return -np.log(p.n)


def _exp(value: Any, base: Any) -> Any:
    return np.exp(value)


def _log(value: Any, base: Any) -> Any:
    return np.log(value)


K_TERM = Term("k", _one, None, None, _exp, _log)
GAMMA_TERMS = {
    "gamma_D": Term("gamma_D", _log_d, "D", GAMMA_BOUND),
    "gamma_G": Term("gamma_G", _log_log2_g, "G", GAMMA_BOUND),
    "gamma_N": Term("gamma_N", _minus_log_n, "N", GAMMA_BOUND),
}


def _power_terms(*names: str, d_term: Term | None = None) -> Callable[..., tuple[Term, ...]]:
    """k and the named exponents in DELTA_PARAMS order (gamma_D's regressor may be replaced)."""
    terms = [K_TERM] + [
        d_term if (name == "gamma_D" and d_term is not None) else GAMMA_TERMS[name]
        for name in DELTA_PARAMS[1:]
        if name in names
    ]
    return lambda groups: tuple(terms)


def _eff_from_u(u: Any, base: Mapping[str, Any] | None) -> Any:
    """eff = (1 + e^u)^(-1/alpha), u = log(eff^-alpha - 1): always inside (0, 1)."""
    alpha = base["alpha"]
    with np.errstate(over="ignore"):
        return (1.0 + np.exp(u)) ** (-1.0 / alpha)


def _u_from_eff(eff: Any, base: Mapping[str, Any] | None) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(eff, float) ** -base["alpha"] - 1.0)


def _eff_terms(groups: tuple[str, ...]) -> tuple[Term, ...]:
    def dummy(label: str) -> Callable[[Points, Mapping[str, Any]], np.ndarray]:
        return lambda p, nl: (p.group == label).astype(float)

    return tuple(Term(f"eff[{g}]", dummy(g), None, None, _eff_from_u, _u_from_eff) for g in groups)


def _eff_offset(p: Points, base: Mapping[str, Any] | None) -> Any:
    """log A - alpha log N: the BF16 law's N term, which eff scales (-inf where a bootstrap
    draw put A on its bound 0: that draw's eff law has no value, and its users drop it)."""
    with np.errstate(divide="ignore"):
        return np.log(base["A"]) - base["alpha"] * np.log(p.n)


PAPER = DeltaLaw(
    "paper",
    "delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N",
    _power_terms("gamma_N", "gamma_D", "gamma_G"),
    nests=("no_D",),
    about="Chen et al. 2025 (arXiv 2505.14302), eq. 4 and Table 1",
)
NO_D = DeltaLaw(
    "no_D",
    "delta = k (log2 G)^gamma_G / N^gamma_N",
    _power_terms("gamma_N", "gamma_G"),
    about="the paper's law without its D term (its Table 4 ablation)",
)
EFF_PER_G = DeltaLaw(
    "eff_per_G",
    "L = A/(N eff_G)^alpha + B/D^beta + E, i.e. delta = A N^-alpha (eff_G^-alpha - 1), one eff_G "
    "per group size; A, alpha from the BF16 law",
    _eff_terms,
    offset=_eff_offset,
    per_group=True,
    uses_base=True,
    about="effective-parameter multiplier fitted per G, the earlier laws (Frantar et al. 2025, "
    "arXiv 2502.16440; Kumar et al. 2024, arXiv 2411.04330) as the paper's Table 2 compares them",
)
LEVELLED_D = DeltaLaw(
    "levelled_D",
    "delta = k D_eff^gamma_D (log2 G)^gamma_G / N^gamma_N, D_eff = D / (1 + D / (c N))",
    _power_terms(
        "gamma_N", "gamma_D", "gamma_G", d_term=Term("gamma_D", _log_d_levelled, "D", GAMMA_BOUND)
    ),
    nonlinear=(
        Nonlinear("c", *C_BOUNDS, tuple(float(v) for v in np.geomspace(*C_BOUNDS, 16)), "D/N"),
    ),
    nests=("paper", "no_D"),
    levels_off=True,
    about="the paper's law while D << c N, levelling off to k (c N)^gamma_D (log2 G)^gamma_G / "
    "N^gamma_N (no D) once D >> c N; c -> infinity is the paper's law (docs/laws.md)",
)
LAWS: dict[str, DeltaLaw] = {law.name: law for law in (PAPER, NO_D, EFF_PER_G, LEVELLED_D)}

# QAT after a BF16 phase: Dremov et al. 2025 (arXiv 2509.22935, "Compute-Optimal QAT") write the
# loss as a Chinchilla law plus a QAT penalty in the tokens per parameter byte of the BF16 and
# the QAT phase, S_x = D_x / (N B / 8): an irreducible floor, a term that shrinks with QAT
# tokens, and an interaction that grows with BF16 tokens (quantizing a longer-trained model is
# harder). At one bit width B their 2^(-c B) factors and the B / 8 are constants, absorbed here
# by k, phi and lambda; N and D / N are written relative to 1e8 parameters and 100 tokens per
# parameter so the grids of starting values cover any model scale. Their law has no group size:
# the paper's (log2 G)^gamma_G multiplies it, as for every law here. docs/laws.md says more.
PHASES_N_REF = 1e8
PHASES_S_REF = 100.0
EXPONENT_BOUNDS = (1e-3, GAMMA_BOUND)
SCALE_BOUNDS = (1e-6, 1e6)


def _phases_shape(p: Points, nl: Mapping[str, Any]) -> np.ndarray:
    """log(1 + pure QAT term + BF16/QAT interaction) of the D_fp_qat law."""
    f = p.start
    n = p.n / PHASES_N_REF
    s_qat = (1.0 - f) * p.d / (PHASES_S_REF * p.n)
    s_fp = f * p.d / (PHASES_S_REF * p.n)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        extra = nl["phi"] * n ** -nl.get("psi", 0.0) * s_qat ** -nl["omega"]
        if "lambda" in nl:
            extra = extra + (
                nl["lambda"] * n ** -nl.get("nu", 0.0) * s_fp ** nl["xi"] * s_qat ** -nl["rho"]
            )
        return np.log1p(extra)


def _scale(name: str, axis: str) -> Nonlinear:
    return Nonlinear(name, *SCALE_BOUNDS, (0.1, 1.0, 10.0), axis)


def _exponent(
    name: str, axis: str, grid: tuple[float, ...], drop_with: str | None = None
) -> Nonlinear:
    return Nonlinear(name, *EXPONENT_BOUNDS, grid, axis, drop_with)


D_FP_QAT = DeltaLaw(
    "D_fp_qat",
    "delta = k (log2 G)^gamma_G [1 + phi n^-psi s_qat^-omega + lambda n^-nu s_fp^xi "
    "s_qat^-rho], n = N / 1e8, s_qat = (1 - f) D / (100 N), s_fp = f D / (100 N)",
    _power_terms("gamma_G"),
    nonlinear=(
        _scale("phi", "D_qat"),
        _exponent("psi", "N", (0.3,), "gamma_N"),
        _exponent("omega", "D_qat", (0.2, 1.0)),
        _scale("lambda", "start fraction"),
        _exponent("nu", "N", (0.3,), "gamma_N"),
        _exponent("xi", "start fraction", (0.2, 1.0)),
        _exponent("rho", "D_qat", (0.2, 1.0)),
    ),
    shape=_phases_shape,
    pooled=True,
    about="Dremov et al. 2025 (arXiv 2509.22935) at one bit width: BF16 tokens D_fp = f D, "
    "then QAT tokens D_qat = (1 - f) D; compared where the settings of several start "
    "fractions f are pooled (fit.json start_fractions)",
)
# Every law fit.json may name: the per-setting candidates, and those compared across start
# fractions (where the paper's law, blind to f, is the incumbent).
KNOWN_LAWS: dict[str, DeltaLaw] = {**LAWS, D_FP_QAT.name: D_FP_QAT}
START_FRACTION_LAWS = (PAPER.name, D_FP_QAT.name)


def groups_of(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The group labels of a per-G law's parameter names (eff[32] -> '32')."""
    return tuple(p[p.index("[") + 1 : -1] for p in params if "[" in p and p.endswith("]"))


def get_law(name: str | None) -> DeltaLaw:
    if name is None:
        return PAPER
    if name not in KNOWN_LAWS:
        raise KeyError(f"unknown law {name!r}; laws: {', '.join(KNOWN_LAWS)}")
    return KNOWN_LAWS[name]


def law_log_delta(
    law: DeltaLaw,
    params: Mapping[str, Any],
    points: Points,
    base: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """log delta of a law; parameters (or base) may hold draws (column vectors) that broadcast
    against the points. A parameter that is None (not identifiable) contributes nothing, as in
    log_delta; a per-G law is NaN at a group it has no parameter for."""
    groups = groups_of(params) if law.per_group else ()
    nl = {
        p.param: np.asarray(params[p.param], float)
        for p in law.nonlinear
        if params.get(p.param) is not None
    }
    out: Any = law.offset(points, base) if law.offset is not None else 0.0
    out = out + np.zeros(np.shape(points.n))
    if law.shape is not None:
        out = out + law.shape(points, nl)
    for term in law.terms(groups):
        value = params.get(term.param)
        if value is None:
            continue
        coef = term.from_param(np.asarray(value, float), base)
        out = out + coef * term.feature(points, nl)
    if law.per_group:
        known = np.isin(points.group, list(groups)) if points.group is not None else False
        out = np.where(known, out, np.nan)
    return out


@dataclass(frozen=True)
class FittedLaw:
    """A law with its parameters (point or draws) and, for laws that need it, the BF16 law."""

    law: DeltaLaw
    params: Mapping[str, Any]
    base: Mapping[str, Any] | None = None

    def log_delta(self, points: Points) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return law_log_delta(self.law, self.params, points, self.base)

    def delta(self, points: Points) -> np.ndarray:
        return np.exp(self.log_delta(points))

    def gradient(self, points: Points, step: float = 1e-6) -> np.ndarray:
        """d log delta / d (coefficients, log nonlinear parameters) at each point, (m, p): the
        linearisation suggest's criterion uses (the regressors, for the paper's law)."""
        groups = groups_of(self.params) if self.law.per_group else ()
        kept = [p for p in self.law.nonlinear if self.params.get(p.param) is not None]
        nl = {p.param: float(self.params[p.param]) for p in kept}
        cols = [
            term.feature(points, nl)
            for term in self.law.terms(groups)
            if self.params.get(term.param) is not None
        ]
        for p in kept:
            up = {**self.params, p.param: nl[p.param] * np.exp(step)}
            down = {**self.params, p.param: nl[p.param] * np.exp(-step)}
            cols.append(
                (law_log_delta(self.law, up, points, self.base)
                 - law_log_delta(self.law, down, points, self.base)) / (2 * step)
            )  # fmt: skip
        return np.column_stack(cols) if cols else np.zeros((len(points.n), 0))


def fitted_law(
    fit: Mapping[str, Any], base: Mapping[str, Any] | None = None, name: str | None = None
) -> FittedLaw:
    """The law of a fit.json delta entry: its selected law, or law `name` from its `laws`
    (KeyError when that law was not fitted); fit.json files from before laws are the paper's."""
    selected = fit.get("law") or "paper"
    if name is None or name == selected:
        return FittedLaw(get_law(selected), dict(fit["params"]), base)
    entry = (fit.get("laws") or {}).get(name)
    if not entry or not entry.get("fitted", True) or entry.get("params") is None:
        why = (entry or {}).get("why", "not in this fit")
        raise KeyError(f"law {name} was not fitted for this setting ({why})")
    return FittedLaw(get_law(name), dict(entry["params"]), base)
