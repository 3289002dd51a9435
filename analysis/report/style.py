"""One visual language for every report figure.

Colour: one per setting (qualitative) wherever settings are compared, one per N (viridis, small
N dark) wherever N is a series, one per D (magma) where D is; G by marker (and by shade where G
is the series). Log axes carry plain ticks (74M, 10B; 32, 64, 128), every fitted curve a 95%
bootstrap band, every excluded point a hollow marker with its reason in the legend. Figures are
saved at DPI as PNG with an SVG beside.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors, ticker

from qat_sweep.common import format_count

DPI = 150
RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "svg.fonttype": "none",  # text stays text in the SVG
    "svg.hashsalt": "qat-sweep",  # identical SVG for an identical fit
}
SETTING_COLORS = plt.get_cmap("tab10").colors
G_MARKERS = {"8": "h", "16": "P", "32": "o", "64": "s", "128": "^", "256": "D", "512": "p"}
NON_POSITIVE_MARKER = "v"  # a delta <= 0 cannot sit on a log axis: drawn at the panel's floor
CHANNEL_MARKER = "*"
BAND_ALPHA = 0.2
UNITS = {
    "n_params": "N (non-embedding parameters)",
    "tokens": "D (training tokens)",
    "G": "group size G (★ per channel: hidden size)",
    "lr": "peak learning rate",
    "delta": "delta = QAT loss - BF16 loss (nats)",
    "loss": "final train loss (nats)",
}


def figure(rows: int = 1, cols: int = 1, width: float = 3.4, height: float = 2.8) -> Any:
    """A figure of rows x cols panels of width x height inches each (axes always 2-D)."""
    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)


def styled(fn: Any) -> Any:
    """Run a figure function (drawing and saving) under the shared rc settings."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(RC):
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def save(fig: Any, path: Path) -> Path:
    """PNG at DPI and an SVG beside it; returns the PNG's path. The layout is computed once
    (a layout engine would redo it for each file)."""
    fig.tight_layout(pad=0.6)
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


class Palette:
    """The report's colours: per setting (by sorted name), per N and per D (over the data's
    range, log scale)."""

    def __init__(
        self, settings: Iterable[str], n_values: Iterable[float], d_values: Iterable[float]
    ):
        ordered = sorted(set(settings))
        self.settings = {k: SETTING_COLORS[i % len(SETTING_COLORS)] for i, k in enumerate(ordered)}
        self._n = _log_norm(n_values)
        self._d = _log_norm(d_values)

    def setting(self, key: str) -> Any:
        return self.settings.get(key, "0.3")

    def n(self, value: float) -> Any:
        return plt.get_cmap("viridis")(0.85 * self._n(value))

    def d(self, value: float) -> Any:
        return plt.get_cmap("magma")(0.15 + 0.7 * self._d(value))


def _log_norm(values: Iterable[float]) -> Any:
    vals = np.asarray([v for v in values if np.isfinite(v) and v > 0], float)
    lo, hi = (vals.min(), vals.max()) if vals.size else (1.0, 10.0)
    return colors.LogNorm(lo, hi if hi > lo else lo * 10, clip=True)


def g_marker(label: str) -> str:
    return CHANNEL_MARKER if label == "channel" else G_MARKERS.get(label, "X")


def g_shade(rank: int, count: int) -> Any:
    """Grey-blue shade of the rank-th of `count` group sizes (darker: larger G)."""
    return plt.get_cmap("Blues")(0.35 + 0.6 * rank / max(count - 1, 1))


def count_formatter() -> Any:
    return ticker.FuncFormatter(lambda v, _: format_count(v) if v > 0 else "")


def count_axis(ax: Any, axis: str) -> None:
    """Log axis of counts (N, D) with ticks like 74M, 10B: at 1-2-5 steps over at most two
    decades (call after plotting: the data's span decides), at decades beyond."""
    _log(ax, axis)
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if lo > 0 and hi / lo <= 100 else (1.0,)
    target.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
    target.set_major_formatter(count_formatter())
    target.set_minor_formatter(ticker.NullFormatter())


def value_axis(ax: Any, axis: str) -> None:
    """Log axis of values (delta, loss, lr) with plain ticks at 1-2-5 steps."""
    _log(ax, axis)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
    target.set_minor_formatter(ticker.NullFormatter())


def data_ticks(ax: Any, values: Iterable[float]) -> None:
    """x ticks at the values a sweep used (learning rates), when there are few of them."""
    vals = sorted({float(v) for v in values if np.isfinite(v) and v > 0})
    if 2 <= len(vals) <= 6:
        ax.set_xticks(vals)
        ax.xaxis.set_minor_locator(ticker.NullLocator())


def group_axis(ax: Any, values: Iterable[float]) -> None:
    """log2 axis of G with a tick at every power of two in the data's range, no overlap."""
    vals = np.asarray([v for v in values if np.isfinite(v) and v > 0], float)
    ax.set_xscale("log", base=2)
    if vals.size:
        lo, hi = int(np.floor(np.log2(vals.min()))), int(np.ceil(np.log2(vals.max())))
        step = int(np.ceil((hi - lo + 1) / 5))  # at most 5 labels: they never touch
        ax.set_xticks([2.0**k for k in range(lo, hi + 1, step)])
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def _log(ax: Any, axis: str) -> None:
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def band(ax: Any, x: np.ndarray, draws: np.ndarray | None, color: Any) -> Any:
    """95% band over bootstrap draws (rows: draws, columns: x); None without draws."""
    if draws is None or draws.ndim != 2 or draws.shape[0] < 10:
        return None
    ok = np.isfinite(draws).all(axis=1)
    if ok.sum() < 10:
        return None
    lo, hi = np.percentile(draws[ok], [2.5, 97.5], axis=0)
    return ax.fill_between(x, lo, hi, color=color, alpha=BAND_ALPHA, lw=0)


def reason_label(reason: str) -> str:
    """An exclusion reason as a legend entry: numbers dropped so alike reasons merge."""
    text = re.sub(r"\s*-?\d[\d.e+-]*", "", str(reason)).strip(" :;,")
    return "excluded: " + (text[:48] + "…" if len(text) > 48 else text)


def hollow(ax: Any, x: Any, y: Any, color: Any, marker: str, label: str | None) -> None:
    ax.scatter(x, y, s=26, marker=marker, facecolors="none", edgecolors=color, lw=1, label=label)


def legend(ax: Any, **kwargs: Any) -> None:
    """A legend without repeated labels (each series and reason once)."""
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    if seen:
        ax.legend(seen.values(), seen.keys(), **kwargs)
