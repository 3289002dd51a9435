"""Report figures (matplotlib Agg, PNG). Each returns its path, or None when data is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.law.base_fit import LawFit
from qat_sweep.analysis.law.delta_fit import predict_delta_rows
from qat_sweep.analysis.law.formulas import bf16_loss, delta_loss

from qat_sweep.common import format_count

DPI = 90


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _label(ax: Any, title: str, x: str, y: str, log: str = "") -> None:
    """Title and axis labels; ``log`` names the log-scaled axes ('x', 'y' or 'xy')."""
    scale = {axis: "log" if axis in log else "linear" for axis in "xy"}
    ax.set(title=title, xlabel=x, ylabel=y, xscale=scale["x"], yscale=scale["y"])


def loss_vs_tokens(bf16: pd.DataFrame, base: LawFit, path: Path) -> Path | None:
    if bf16.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    d_grid = np.geomspace(bf16["tokens"].min() / 1.5, bf16["tokens"].max() * 1.5, 80)
    for i, (n, part) in enumerate(bf16.groupby("n_params")):
        color = f"C{i % 10}"
        ax.scatter(part["tokens"], part["loss"], color=color, label=f"N = {format_count(int(n))}")
        if base.params.get("A") is not None:
            ax.plot(d_grid, bf16_loss(base.params, n, d_grid), color=color, lw=1)
    _label(ax, "BF16 loss and fitted law", "training tokens D", "final train loss", log="x")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _panels(keys: list[str]) -> tuple[Any, np.ndarray]:
    cols = min(3, len(keys))
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    return fig, axes.flat


def delta_trend(
    quant: pd.DataFrame, deltas: dict[str, LawFit], column: str, path: Path
) -> Path | None:
    """delta against N, D or G per setting; series over the other regressor, fitted lines."""
    keys = [k for k in deltas if quant.loc[quant["fit_key"] == k, column].nunique() >= 2]
    if not keys:
        return None
    label = {
        "n_params": "N (non-embedding params)",
        "tokens": "D (tokens)",
        "G": "G (log2 group size)",
    }[column]
    series = "group_size" if column != "G" else "n_params"
    fig, axes = _panels(keys)
    for ax, key in zip(axes, keys, strict=False):
        part = quant[quant["fit_key"] == key]
        fixed = "tokens" if column != "tokens" else "n_params"
        if column == "G":
            fixed = "tokens"
        ref = part[fixed].max()
        part = part[part[fixed] == ref]
        for i, (s, grp) in enumerate(part.groupby(part[series].astype(str), sort=False)):
            grp = grp.sort_values(column)
            color = f"C{i % 10}"
            name = f"G={s}" if series == "group_size" else f"N={format_count(int(float(s)))}"
            ax.scatter(grp[column], grp["delta"], color=color, s=14, label=name)
            ax.plot(grp[column], predict_delta_rows(deltas[key], grp), color=color, lw=1)
        law = deltas[key].internal.get("law", "paper")
        _label(ax, f"{key} [{law}] ({fixed}={ref:.3g})", label, "delta", log="xy")
        ax.legend(fontsize=6)
    return _save(fig, path)


def predicted_vs_actual(quant: pd.DataFrame, deltas: dict[str, LawFit], path: Path) -> Path | None:
    if quant.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, key in enumerate(deltas):
        part = quant[quant["fit_key"] == key]
        ax.scatter(
            part["delta"],
            predict_delta_rows(deltas[key], part),
            s=12,
            color=f"C{i % 10}",
            label=key,
        )
    lims = [quant["delta"].min() * 0.8, quant["delta"].max() * 1.2]
    ax.plot(lims, lims, "k--", lw=1)
    _label(ax, "delta: predicted vs actual", "actual delta", "predicted delta", log="xy")
    ax.legend(fontsize=7)
    return _save(fig, path)


def residuals(
    base: LawFit, bf16: pd.DataFrame, quant: pd.DataFrame, deltas: dict[str, LawFit], path: Path
) -> Path | None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if base.resid.size:
        ax1.scatter(bf16["tokens"], base.resid, c=np.log(bf16["n_params"]), cmap="viridis", s=18)
    ax1.axhline(0, color="k", lw=0.8)
    _label(ax1, "BF16 log residuals (colour: log N)", "D", "log L_pred - log L", log="x")
    for i, (key, fit) in enumerate(deltas.items()):
        part = quant[quant["fit_key"] == key]
        ax2.scatter(predict_delta_rows(fit, part), fit.resid, s=10, color=f"C{i % 10}", label=key)
    ax2.axhline(0, color="k", lw=0.8)
    _label(ax2, "delta log residuals", "predicted delta", "log pred - log actual", log="x")
    ax2.legend(fontsize=6)
    return _save(fig, path)


def law_residuals(quant: pd.DataFrame, laws: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Per setting, each fitted law's log residuals against D/N, N and G, with the median per
    value joined by a line: where a law bends away from the data, its line leaves zero."""
    keys = [k for k, fits in laws.items() if sum(not isinstance(f, str) for f in fits.values()) > 1
            and quant.loc[quant["fit_key"] == k, "tokens"].nunique() > 1]  # fmt: skip
    if not keys:
        return None
    axes_of = (
        ("D/N", "tokens per parameter D/N (median per log bin)"),
        ("n_params", "N"),
        ("G", "G (channel: hidden size)"),
    )
    fig, axes = plt.subplots(
        len(keys), 3, figsize=(13, 3.2 * len(keys)), squeeze=False, sharey="row"
    )
    for row, key in zip(axes, keys, strict=True):
        part = quant[quant["fit_key"] == key].reset_index(drop=True)
        part = part.assign(**{"D/N": part["tokens"] / part["n_params"]})
        everything = []
        for i, (name, fit) in enumerate(laws[key].items()):
            if isinstance(fit, str):
                continue
            resid = np.log(predict_delta_rows(fit, part)) - np.log(part["delta"].to_numpy())
            everything.append(resid)
            for ax, (column, _) in zip(row, axes_of, strict=True):
                x = part[column].to_numpy(float)
                ax.scatter(x, resid, s=6, color=f"C{i}", alpha=0.3)
                centres, med = _binned_median(x, resid, binned=column == "D/N")
                ax.plot(centres, med, color=f"C{i}", lw=1.6, marker="o", ms=3, label=name)
        spread = np.concatenate(everything)
        spread = spread[np.isfinite(spread)]
        centre = float(np.median(spread)) if spread.size else 0.0
        half = (
            max(6 * 1.4826 * float(np.median(np.abs(spread - centre))), 0.05)
            if spread.size
            else 1.0
        )
        for ax, (_, label) in zip(row, axes_of, strict=True):
            ax.axhline(0, color="k", lw=0.8)
            _label(ax, key, label, "log pred - log actual", log="x")
            ax.set_ylim(
                centre - half, centre + half
            )  # beyond: outliers (the delta section lists them)
        row[0].legend(fontsize=7)
    return _save(fig, path)


def _binned_median(x: np.ndarray, y: np.ndarray, binned: bool) -> tuple[np.ndarray, np.ndarray]:
    """Median of y per distinct x, or per log-spaced bin of x (at most 8) when `binned`."""
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    values = np.unique(np.round(x, 6))
    if not binned or len(values) <= 8:
        return values, np.array([np.median(y[np.isclose(x, v)]) for v in values])
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-9), 9)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 7)
    keep = [b for b in range(8) if (which == b).any()]
    centres = np.array([np.exp(np.mean(np.log(x[which == b]))) for b in keep])
    return centres, np.array([np.median(y[which == b]) for b in keep])


def decomposition(result: dict[str, Any], path: Path) -> Path | None:
    if not result.get("available"):
        return None
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(pts["sum"], pts["w4a4"], s=12)
    xs = np.array([min(pts["sum"]), max(pts["sum"])])
    ax.plot(
        xs,
        result["k_prime"] * xs,
        "r-",
        label=f"k' = {result['k_prime']:.3f} (paper {paper.FINDINGS['decomposition_k']})",
    )
    ax.set(
        xlabel="delta_W4A16 + delta_W16A4", ylabel="delta_W4A4", title="Decomposition of W4A4 error"
    )
    ax.legend()
    return _save(fig, path)


def ratio_heatmap(result: dict[str, Any], path: Path) -> Path | None:
    panels = [(k, v) for k, v in result.items() if v.get("available")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (label, item) in zip(axes.flat, panels, strict=True):
        frame = pd.DataFrame(item["grid"]).astype(float)
        image = ax.imshow(frame.to_numpy(), cmap="coolwarm", vmin=0.5, vmax=1.5, aspect="auto")
        ax.set_xticks(range(len(frame.columns)), frame.columns)
        ax.set_yticks(range(len(frame.index)), frame.index)
        for (r, c), v in np.ndenumerate(frame.to_numpy()):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set(xlabel="G", ylabel="D/N", title=f"R = delta_W16A4 / delta_W4A16 ({label})")
        fig.colorbar(image, ax=ax)
    return _save(fig, path)


def contours(deltas: dict[str, LawFit], path: Path, g: float = 128) -> Path | None:
    keys = [
        k
        for k, f in deltas.items()
        if f.params.get("gamma_N") is not None and f.params.get("gamma_D") is not None
    ]
    if not keys:
        return None
    n_grid = np.geomspace(5e7, 1e10, 60)
    d_grid = np.geomspace(5e9, 1e12, 60)
    nn, dd = np.meshgrid(n_grid, d_grid)
    fig, axes = _panels(keys)
    for ax, key in zip(axes, keys, strict=False):
        params = {p: (v if v is not None else 0.0) for p, v in deltas[key].params.items()}
        z = delta_loss(params, nn, dd, g)
        cs = ax.contour(np.log10(nn), np.log10(dd), z, levels=8, cmap="viridis")
        ax.clabel(cs, fontsize=6, fmt="%.3f")
        slope = params["gamma_N"] / params["gamma_D"] if params["gamma_D"] else float("nan")
        ax.set(
            xlabel="log10 N", ylabel="log10 D", title=f"iso-delta {key}, G={g:g}, slope {slope:.2f}"
        )
    return _save(fig, path)


def bars_per_group(
    values: dict[str, dict[str, float]], title: str, ylabel: str, path: Path
) -> Path | None:
    """Grouped bars: one group per G, one bar per series (FC2 reduction, INT4 - FP4)."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    groups = list(dict.fromkeys(g for series in values.values() for g in series))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / len(values)
    for i, (name, series) in enumerate(values.items()):
        xs = np.arange(len(groups)) + i * width
        ax.bar(xs, [series.get(g, np.nan) for g in groups], width=width, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="G", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def effective_params(predictions: list[dict[str, Any]], path: Path) -> Path | None:
    rows = [p for p in predictions if p.get("eff_multiplier")]
    if not rows:
        return None
    frame = pd.DataFrame(
        {
            "model": r["model"],
            "tpp": r["tokens_per_param"],
            "setting": r["setting"],
            "eff": r["eff_multiplier"]["value"],
        }
        for r in rows
    )
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, ((setting, tpp), part) in enumerate(frame.groupby(["setting", "tpp"])):
        ax.plot(
            part["model"],
            part["eff"],
            marker="o",
            color=f"C{i // 2 % 10}",
            ls="-" if tpp == 20 else "--",
            label=f"{setting}, D={tpp}N",
        )
    ax.set(
        ylabel="effective parameter multiplier",
        title="eff = (A/(A + delta N^alpha))^(1/alpha), G=128",
    )
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def make_all(outcome: Any, plots_dir: Path) -> dict[str, Path]:
    """Every figure for the report, keyed by a short name; stale PNGs are removed first."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    res, quant, deltas = outcome.result, outcome.quant, outcome.deltas
    an = res["analyses"]
    figures = {
        "loss_vs_D": loss_vs_tokens(outcome.bf16, outcome.base, plots_dir / "loss_vs_D.png"),
        "delta_vs_N": delta_trend(quant, deltas, "n_params", plots_dir / "delta_vs_N.png"),
        "delta_vs_D": delta_trend(quant, deltas, "tokens", plots_dir / "delta_vs_D.png"),
        "delta_vs_G": delta_trend(quant, deltas, "G", plots_dir / "delta_vs_G.png"),
        "predicted_vs_actual": predicted_vs_actual(quant, deltas, plots_dir / "predicted_vs_actual.png"),
        "residuals": residuals(outcome.base, outcome.bf16, quant, deltas, plots_dir / "residuals.png"),
        "law_residuals": law_residuals(quant, outcome.laws, plots_dir / "law_residuals.png"),
        "decomposition": decomposition(an["decomposition"], plots_dir / "decomposition.png"),
        "ratio_R": ratio_heatmap(an["ratio_R"], plots_dir / "ratio_R.png"),
        "contours": contours(outcome.paper or deltas, plots_dir / "contours.png"),
        "fc2_8bit": bars_per_group(
            {k: v.get("reduction_per_G", {}) for k, v in an["fc2_8bit"].items() if k != "paper"},
            "delta reduction with 8-bit FC2 input", "1 - delta_fc2a8 / delta", plots_dir / "fc2_8bit.png",
        ),
        "int4_vs_fp4": bars_per_group(
            {"w4a4": an["int4_vs_fp4"].get("int4_minus_fp4_per_G", {})},
            "INT4 - FP4 delta per G (negative: INT4 better)", "delta_INT4 - delta_FP4", plots_dir / "int4_vs_fp4.png",
        ),
        "effective_params": effective_params(res.get("predictions", []), plots_dir / "effective_params.png"),
    }  # fmt: skip
    return {k: v for k, v in figures.items() if v is not None}
