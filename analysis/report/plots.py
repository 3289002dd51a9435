"""Report figures in the shared style (style.py). Each returns its PNG path (an SVG lies beside
it), or None when the data it needs is missing, so no figure has an empty panel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from qat_sweep.analysis import paper
from qat_sweep.analysis.cells import cell_values
from qat_sweep.analysis.collect import InputError
from qat_sweep.analysis.law.base_fit import LawFit
from qat_sweep.analysis.law.formulas import (
    BASE_PARAMS,
    Points,
    bf16_loss,
    delta_loss,
    effective_multiplier,
    group_label,
)
from qat_sweep.analysis.predict import DeltaLawDraws, SavedFit, delta_law
from qat_sweep.analysis.report import style
from qat_sweep.analysis.report.style import UNITS, Palette, styled

from qat_sweep.common import format_count
from qat_sweep.record import METRICS_NAME

MAX_DRAWS = 400  # bands from at most this many bootstrap draws: percentiles settle well before
CURVE_POINTS = 48
EFF_TOKENS_PER_PARAM = 20
EFF_G = 128
EFF_LARGEST_N = 70e9
HEADLINE = "w4a4/int4"  # the paper's main setting: its parameters get the pair plot

CAPTIONS = {
    "bf16_law": "BF16 loss against N (colour: D) and against D (colour: N) with the fitted law "
    "and its 95% bootstrap band; hollow: runs left out of the base fit, with the reason.",
    "delta_vs_N": "delta against N at the largest D of each setting, one series per G (marker "
    "and shade), the selected law with its 95% bootstrap band; hollow: excluded or held out.",
    "delta_vs_D": "delta against D at the largest N of each setting, one series per G (marker "
    "and shade), the selected law with its 95% bootstrap band; hollow: excluded or held out.",
    "delta_vs_G": "delta against group size at the largest D of each setting, one series per N "
    "(colour), the selected law with its 95% bootstrap band; ★: per channel (G = hidden size).",
    "predicted_vs_measured": "Predicted against measured delta per run (colour: setting); "
    "bars: 95% bootstrap interval of the prediction; dashed: equality.",
    "twin_curves": "Training loss (smoothed) of a quantized run (solid) beside its BF16 twin "
    "(dashed) at the largest N and D of each setting; colour: setting.",
    "delta_vs_lr": "delta against the peak learning rate (the paper's Fig. 3), one series per N "
    "(colour), G by marker; hollow: excluded.",
    "residuals": "Log residuals (log predicted - log measured) of the BF16 law (top, colour: "
    "the other axis) and of each setting's delta law (bottom, colour: setting) against N, D "
    "and G.",
    "pairs_bf16": "Bootstrap draws of the BF16 law's parameters, pair by pair (red: the "
    "estimate); a ridge means two parameters trade off.",
    "pairs_delta": "Bootstrap draws of the headline setting's delta-law parameters (red: the "
    "estimate).",
    "law_residuals": "Each candidate law's log residuals against D/N, N and G per setting; the "
    "line joins the median per value (colour: law).",
    "effective_params": "Effective parameter multiplier at D = 20 N, G = 128, with 95% "
    "bootstrap bands; grey: the fitted N range; dotted beyond it: an extrapolation.",
    "decomposition": "W4A4 delta against the sum of the weight-only and activation-only deltas "
    "of the same cells, with the fitted ratio k'.",
    "ratio_R": "R = delta_W16A4 / delta_W4A16 per D/N and G.",
    "contours": "Iso-delta contours of the paper's law in (N, D) at G = 128.",
    "fc2_8bit": "Reduction of delta when the FC2 input stays at 8 bits, per G.",
    "int4_vs_fp4": "INT4 minus FP4 delta (W4A4) per G; negative: INT4 better.",
}


@dataclass
class Inputs:
    """What every figure reads: the fit, its draws, the table and the shared colours."""

    outcome: Any  # pipeline.FitOutcome (not imported: the pipeline imports this package)
    saved: SavedFit
    palette: Palette
    runs_root: Path | None

    @property
    def table(self) -> pd.DataFrame:
        return self.outcome.table

    def law(self, key: str) -> DeltaLawDraws | None:
        try:
            return delta_law(self.saved, key)
        except InputError:
            return None


def _draws(law: DeltaLawDraws, points: Points) -> tuple[np.ndarray, np.ndarray | None]:
    point = law.point.delta(points)
    if law.draws is None or len(law.draws) < 10:
        return point, None
    return point, law.at_draws(law.draws[:MAX_DRAWS]).delta(points)


def _others(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The setting's runs with a delta that the fit did not use (excluded or held out)."""
    mine = table[(table["fit_key"] == key) & ((table["excluded"] != "") | table["holdout"])]
    return mine[np.isfinite(mine["delta"].astype(float))]


def _why(row: Any) -> str:
    return style.reason_label(row.excluded) if row.excluded else "held out (not fitted)"


def _draw_left_out(ax: Any, rows: pd.DataFrame, x: str, colors: list[Any], floor: float) -> None:
    """Hollow markers with the reason; a non-positive delta sits at the panel's floor (v)."""
    for row, color in zip(rows.itertuples(), colors, strict=True):
        y = row.delta if row.delta > 0 else floor
        label = group_label(row.group_size)
        marker = style.g_marker(label) if row.delta > 0 else style.NON_POSITIVE_MARKER
        style.hollow(ax, getattr(row, x), y, color, marker, _why(row))


def _with_cells(frame: pd.DataFrame) -> pd.DataFrame:
    n, d = cell_values(frame)
    return frame.assign(N_cell=n, D_cell=d)


def _series_curve(
    law: DeltaLawDraws, rows: pd.DataFrame, x: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The law along `x` (N_cell, D_cell or G) through a series' runs: a dense line (the
    other regressors interpolated in log space between the runs), or the runs' own points for
    a per-G law."""
    rows = rows.sort_values(x)
    xs = rows[x].to_numpy(float)
    if law.point.law.per_group or len(np.unique(xs)) < 2:
        points = Points.of(rows)
        grid = xs
    else:
        grid = np.geomspace(xs.min(), xs.max(), CURVE_POINTS)
        vals = [
            grid if c == x else np.exp(np.interp(np.log(grid), np.log(xs), np.log(rows[c].to_numpy(float))))
            for c in ("N_cell", "D_cell", "G")
        ]  # fmt: skip
        group = group_label(rows["group_size"].iloc[0]) if x != "G" else None
        points = Points.at(*vals, group)
    point, draws = _draws(law, points)
    return grid, point, draws


def _setting_panels(count: int) -> tuple[Any, list[Any]]:
    cols = min(3, count)
    rows = int(np.ceil(count / cols))
    fig, axes = style.figure(rows, cols, 3.6, 2.9)
    flat = list(axes.flat)
    for ax in flat[count:]:
        fig.delaxes(ax)  # no empty panel
    return fig, flat[:count]


@styled
def bf16_law(inputs: Inputs, path: Path) -> Path | None:
    out = inputs.outcome
    bf16, base = _with_cells(out.bf16), out.base
    if bf16.empty:
        return None
    table = inputs.table
    left = table[(table["scheme"] == "bf16") & ~table["run_key"].isin(bf16["run_key"])]
    left = _with_cells(left[np.isfinite(left["loss"].astype(float))]) if len(left) else left
    draws = inputs.saved.draws.get("base")
    params = (
        dict(zip(BASE_PARAMS, draws[:MAX_DRAWS].T[:, :, None], strict=True))
        if draws is not None
        else None
    )
    fitted = base.params.get("A") is not None
    fig, axes = style.figure(1, 2, 3.9, 3.1)
    ax_n, ax_d = axes[0]
    pal = inputs.palette
    for ax, x, series, color_of, other_name in (
        (ax_n, "N_cell", "D_cell", pal.d, "D"),
        (ax_d, "D_cell", "N_cell", pal.n, "N"),
    ):
        lo, hi = bf16[x].min(), bf16[x].max()
        grid = np.geomspace(lo / 1.3, hi * 1.3, CURVE_POINTS)
        for value, part in bf16.groupby(series):
            color = color_of(value)
            ax.scatter(part[x], part["loss"], color=color, s=16, zorder=3,
                       label=f"{other_name} = {format_count(value)}")  # fmt: skip
            if not fitted:
                continue
            n, d = (grid, value) if x == "N_cell" else (value, grid)
            ax.plot(grid, bf16_loss(base.params, n, d), color=color)
            if params is not None:
                style.band(ax, grid, bf16_loss(params, n, d), color)
        for row in left.itertuples() if len(left) else ():
            why = (
                _why(row) if row.excluded or row.holdout else "non-best learning rate (not fitted)"
            )
            style.hollow(ax, getattr(row, x), row.loss, color_of(getattr(row, series)), "o", why)
        style.count_axis(ax, "x")
        ax.set(xlabel=UNITS["n_params" if x == "N_cell" else "tokens"], ylabel=UNITS["loss"])
        style.legend(ax, fontsize=6, ncol=2)
    ax_n.set_title("BF16 loss against N")
    ax_d.set_title("BF16 loss against D" + ("" if fitted else " (law not identifiable)"))
    return style.save(fig, path)


@styled
def delta_trend(inputs: Inputs, column: str, path: Path) -> Path | None:
    """delta against N, D or G per setting at the largest value of the other count, the
    selected law with its band; left-out runs hollow with their reason."""
    quant = _with_cells(inputs.outcome.quant)
    x = {"n_params": "N_cell", "tokens": "D_cell", "G": "G"}[column]
    keys = [k for k in inputs.outcome.deltas if quant.loc[quant["fit_key"] == k, x].nunique() >= 2]
    if not keys:
        return None
    fig, axes = _setting_panels(len(keys))
    fixed = "N_cell" if column == "tokens" else "D_cell"
    series = "N_cell" if column == "G" else "Gl"  # G's panels: a series per N; else per G
    table = _with_cells(inputs.table)
    for ax, key in zip(axes, keys, strict=True):
        part = quant[quant["fit_key"] == key]
        ref = part[fixed].max()
        part = part[part[fixed] == ref].assign(Gl=lambda f: f["group_size"].map(group_label))
        others = _others(table, key)
        others = others[others[fixed] == ref].assign(Gl=lambda f: f["group_size"].map(group_label))
        colors = _series_colors(inputs.palette, series, [*part[series], *others[series]])
        law = inputs.law(key)
        drawn: list[tuple[np.ndarray, Any, Any]] = []  # (curve, line, band) in the panel
        for value in colors:  # in the colours' order: by N, or by G with channel last
            grp = part[part[series] == value]
            if grp.empty:
                continue
            color = colors[value]
            for g, pts in grp.groupby("Gl"):
                ax.scatter(pts[x], pts["delta"], color=color, marker=style.g_marker(g), zorder=3,
                           s=24 if g == "channel" else 14)  # fmt: skip
            name = f"N = {format_count(value)}" if series == "N_cell" else f"G = {value}"
            marker = "o" if series == "N_cell" else style.g_marker(value)
            ax.plot([], [], color=color, marker=marker, ms=3, label=name)
            fit_rows = grp[grp["Gl"] != "channel"] if column == "G" else grp
            if law is not None and fit_rows[x].nunique() >= 2:
                grid, point, draws = _series_curve(law, fit_rows, x)
                curve = np.concatenate([grid, point])
                same = [d for d in drawn if d[0].shape == curve.shape and np.allclose(d[0], curve)]
                if same:  # the law is blind to the series (its exponent not identifiable)
                    _shared(same[0][1], same[0][2], "N" if series == "N_cell" else "G")
                    continue
                (line,) = ax.plot(grid, point, color=color, lw=1.1)
                drawn.append((curve, line, style.band(ax, grid, draws, color)))
        positive = part["delta"][part["delta"] > 0]
        floor = float(positive.min()) * 0.7 if len(positive) else 1e-3
        _draw_left_out(ax, others, x, [colors[v] for v in others[series]], floor)
        if column == "G":
            style.group_axis(ax, pd.concat([part["G"], others["G"]]))
        else:
            style.count_axis(ax, "x")
        style.value_axis(ax, "y")
        where = f"{'N' if fixed == 'N_cell' else 'D'} = {format_count(ref)}"
        ax.set_title(f"{key} [{law.name if law else 'no law'}], {where}")
        ax.set(xlabel=UNITS[column], ylabel=UNITS["delta"])
        style.legend(ax, fontsize=6)
    return style.save(fig, path)


def _shared(line: Any, band: Any, axis: str) -> None:
    """One line for every series: grey, and says so in the legend."""
    line.set_color("0.35")
    line.set_label(f"law: one line for every {axis}")
    if band is not None:
        band.set_color("0.35")


def _series_colors(palette: Palette, series: str, values: list[Any]) -> dict[Any, Any]:
    """A colour per N (the palette's), or a shade per G label (darker: larger G)."""
    if series == "N_cell":
        return {v: palette.n(v) for v in sorted(set(values))}
    labels = sorted(set(values), key=lambda s: (s == "channel", float(s) if s.isdigit() else 0))
    return {g: style.g_shade(i, len(labels)) for i, g in enumerate(labels)}


@styled
def predicted_vs_measured(inputs: Inputs, path: Path) -> Path | None:
    quant = inputs.outcome.quant
    if quant.empty:
        return None
    fig, axes = style.figure(1, 1, 4.6, 4.2)
    ax = axes[0, 0]
    for key in inputs.outcome.deltas:
        part = quant[quant["fit_key"] == key]
        law = inputs.law(key)
        if law is None or part.empty:
            continue
        point, draws = _draws(law, Points.of(part))
        color = inputs.palette.setting(key)
        if draws is not None:
            ok = np.isfinite(draws).all(axis=1)
            lo, hi = np.percentile(draws[ok], [2.5, 97.5], axis=0)
            err = np.vstack([np.clip(point - lo, 0, None), np.clip(hi - point, 0, None)])
            ax.errorbar(part["delta"], point, yerr=err, fmt="none", ecolor=color, alpha=0.35,
                        lw=0.7)  # fmt: skip
        ax.scatter(part["delta"], point, s=10, color=color, label=f"{key} [{law.name}]", zorder=3)
    values = quant["delta"][quant["delta"] > 0]
    lims = [values.min() * 0.8, values.max() * 1.25]
    ax.plot(lims, lims, "k--", lw=0.8)
    style.value_axis(ax, "x")
    style.value_axis(ax, "y")
    ax.set(xlabel="measured " + UNITS["delta"], ylabel="predicted delta (nats)",
           title="delta: predicted against measured")  # fmt: skip
    style.legend(ax, fontsize=6)
    return style.save(fig, path)


@styled
def residuals(inputs: Inputs, path: Path) -> Path | None:
    out = inputs.outcome
    bf16, quant = _with_cells(out.bf16), _with_cells(out.quant)
    has_base = out.base.resid.size == len(bf16) and len(bf16) > 0
    has_delta = not quant.empty
    if not (has_base or has_delta):
        return None
    rows = int(has_base) + int(has_delta)
    fig, axes = style.figure(rows, 3, 3.2, 2.6)
    row = 0
    if has_base:
        resid = out.base.resid
        n_log, d_log = np.log10(bf16["N_cell"]), np.log10(bf16["D_cell"])
        fitted = bf16["loss"].to_numpy() * np.exp(resid)
        for ax, x, colour, label, cmap, cname in (
            (axes[0, 0], bf16["N_cell"], d_log, UNITS["n_params"], "magma", "log10 D"),
            (axes[0, 1], bf16["D_cell"], n_log, UNITS["tokens"], "viridis", "log10 N"),
            (axes[0, 2], fitted, n_log, "fitted BF16 loss (nats)", "viridis", "log10 N"),
        ):
            image = ax.scatter(x, resid, c=colour, cmap=cmap, s=14)
            fig.colorbar(image, ax=ax, label=cname, pad=0.01)
            ax.axhline(0, color="k", lw=0.7)
            if ax is not axes[0, 2]:
                style.count_axis(ax, "x")
            ax.set(xlabel=label, ylabel="BF16 log residual")
        row = 1
    if has_delta:
        for key in out.deltas:
            part = quant[quant["fit_key"] == key]
            law = inputs.law(key)
            if law is None or part.empty:
                continue
            resid = np.log(law.point.delta(Points.of(part))) - np.log(part["delta"].to_numpy())
            color = inputs.palette.setting(key)
            for ax, x in zip(axes[row], ("N_cell", "D_cell", "G"), strict=True):
                ax.scatter(part[x], resid, s=8, color=color, alpha=0.7, label=key)
        for ax, x in zip(axes[row], ("n_params", "tokens", "G"), strict=True):
            ax.axhline(0, color="k", lw=0.7)
            if x == "G":
                style.group_axis(ax, quant["G"])
            else:
                style.count_axis(ax, "x")
            ax.set(xlabel=UNITS[x], ylabel="delta log residual")
        style.legend(axes[row, 2], fontsize=6)
    return style.save(fig, path)


def _read_curve(path: Path) -> pd.DataFrame:
    """(tokens, loss) rows of a metrics.jsonl; unreadable lines are skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        loss = row.get("loss_smoothed", row.get("loss")) if isinstance(row, dict) else None
        if isinstance(loss, (int, float)) and isinstance(row.get("tokens"), (int, float)):
            rows.append((row["tokens"], loss))
    return pd.DataFrame(rows, columns=["tokens", "loss"])


def _twin_key(bf16: pd.DataFrame, run: pd.Series) -> str | None:
    """The run key of a run's BF16 twin: as its record names it, else the BF16 run of the same
    cell, learning rate and seed (how the fit pairs tables without twin_key)."""
    named = run.get("twin_key")
    if isinstance(named, str) and named:
        return named
    same = bf16[(bf16["N_cell"] == run["N_cell"]) & (bf16["D_cell"] == run["D_cell"])
                & (bf16["lr"] == run["lr"]) & (bf16["seed"] == run["seed"])]  # fmt: skip
    return str(same["run_key"].iloc[0]) if len(same) else None


@styled
def twin_curves(inputs: Inputs, path: Path) -> Path | None:
    """One panel per setting: its run at the largest N and D (first G) beside its BF16 twin."""
    root = inputs.runs_root
    if root is None:
        return None
    table = _with_cells(inputs.table)
    bf16 = table[table["scheme"] == "bf16"]
    pairs = []
    for key in inputs.outcome.deltas:
        part = table[(table["fit_key"] == key) & (table["excluded"] == "")]
        if part.empty:
            continue
        top = part[(part["N_cell"] == part["N_cell"].max())]
        top = top[top["D_cell"] == top["D_cell"].max()].iloc[0]
        twin = _twin_key(bf16, top)
        quant_file = root / str(top["run_key"]) / METRICS_NAME
        twin_file = root / str(twin) / METRICS_NAME
        if twin and quant_file.is_file() and twin_file.is_file():
            pairs.append((key, top, _read_curve(quant_file), _read_curve(twin_file)))
    pairs = [p for p in pairs if len(p[2]) and len(p[3])]
    if not pairs:
        return None
    fig, axes = _setting_panels(len(pairs))
    for ax, (key, run, q_curve, b_curve) in zip(axes, pairs, strict=True):
        color = inputs.palette.setting(key)
        name = f"{key} G = {group_label(run['group_size'])}"
        ax.plot(q_curve["tokens"], q_curve["loss"], color=color, label=name)
        ax.plot(b_curve["tokens"], b_curve["loss"], color="0.2", ls="--", lw=1, label="BF16 twin")
        ax.xaxis.set_major_formatter(style.count_formatter())
        tail = pd.concat(
            [q_curve["loss"].iloc[len(q_curve) // 5 :], b_curve["loss"].iloc[len(b_curve) // 5 :]]
        )
        ax.set_ylim(tail.min() * 0.99, tail.max() * 1.01)  # the last 80 %: where twins part
        ax.set(xlabel="tokens seen", ylabel="train loss, smoothed (nats)",
               title=f"N = {format_count(run['N_cell'])}, D = {format_count(run['D_cell'])}, "
               f"delta = {run['delta']:.4f}")  # fmt: skip
        style.legend(ax, fontsize=6)
    return style.save(fig, path)


@styled
def delta_vs_lr(inputs: Inputs, path: Path) -> Path | None:
    table = _with_cells(inputs.table)
    runs = table[(table["scheme"] != "bf16") & np.isfinite(table["delta"].astype(float))]
    cell = ["fit_key", "N_cell", "D_cell", "G"]
    if runs.empty:
        return None
    runs = runs[runs.groupby(cell)["lr"].transform("nunique") >= 2]
    keys = sorted(runs["fit_key"].unique())
    if not keys:
        return None
    fig, axes = _setting_panels(len(keys))
    pal = inputs.palette
    for ax, key in zip(axes, keys, strict=True):
        part = runs[runs["fit_key"] == key]
        positive = part["delta"][part["delta"] > 0]
        floor = float(positive.min()) * 0.7 if len(positive) else 1e-3
        series = part.groupby(["N_cell", "D_cell", part["group_size"].map(group_label)])
        for (n, d, g), grp in series:
            grp = grp.sort_values("lr")
            used = grp[(grp["excluded"] == "") & (grp["delta"] > 0)]
            ax.plot(used["lr"], used["delta"], color=pal.n(n), marker=style.g_marker(g), ms=4,
                    label=f"N = {format_count(n)}, D = {format_count(d)}, G = {g}")  # fmt: skip
            left = grp[grp["excluded"] != ""]
            _draw_left_out(ax, left, "lr", [pal.n(v) for v in left["N_cell"]], floor)
        style.value_axis(ax, "x")
        style.data_ticks(ax, part["lr"])
        style.value_axis(ax, "y")
        ax.set(xlabel=UNITS["lr"], ylabel=UNITS["delta"], title=key)
        style.legend(ax, fontsize=6)
    return style.save(fig, path)


def _pair_plot(names: list[str], draws: np.ndarray, point: dict[str, float], title: str,
               path: Path) -> Path | None:  # fmt: skip
    """Lower-triangle scatter of draws per parameter pair, histograms on the diagonal."""
    ok = np.isfinite(draws).all(axis=1)
    keep = [i for i, _ in enumerate(names) if np.ptp(draws[ok, i]) > 0] if ok.sum() >= 10 else []
    if len(keep) < 2:
        return None
    names, draws = [names[i] for i in keep], draws[ok][:, keep]
    logs = [n in ("A", "B", "k", "c") and (draws[:, i] > 0).all() for i, n in enumerate(names)]
    vals = np.where(logs, np.log10(np.where(draws > 0, draws, 1)), draws)
    size = len(names)
    fig, axes = style.figure(size, size, 1.6, 1.6)
    for r in range(size):
        for c in range(size):
            ax = axes[r, c]
            if c > r:
                fig.delaxes(ax)
                continue
            est = [point.get(n) for n in (names[c], names[r])]
            est = [
                np.log10(v) if lg and v and v > 0 else v
                for v, lg in zip(est, (logs[c], logs[r]), strict=True)
            ]
            if r == c:
                ax.hist(vals[:, c], bins=30, color="0.55")
                if est[0] is not None:
                    ax.axvline(est[0], color="C3", lw=1)
                ax.set_yticks([])
            else:
                ax.scatter(vals[:, c], vals[:, r], s=2, color="0.3", alpha=0.3, lw=0)
                if None not in est:
                    ax.plot(est[0], est[1], "+", color="C3", ms=9, mew=1.5)
            label = lambda i: f"log10 {names[i]}" if logs[i] else names[i]  # noqa: E731
            ax.set_xlabel(label(c) if r == size - 1 else "")
            ax.set_ylabel(label(r) if c == 0 and r > 0 else "")
            ax.tick_params(labelsize=6)
            if r != size - 1:
                ax.set_xticklabels([])
            if c != 0 and r != c:
                ax.set_yticklabels([])
    fig.suptitle(title, fontsize=9)
    return style.save(fig, path)


@styled
def pairs_bf16(inputs: Inputs, path: Path) -> Path | None:
    draws = inputs.saved.draws.get("base")
    if draws is None:
        return None
    base = inputs.outcome.base
    names = list(BASE_PARAMS)
    title = "BF16 law: bootstrap draws"
    if inputs.outcome.result["settings"]["tied"]:  # beta = alpha: one column says it
        keep = [i for i, n in enumerate(names) if n != "beta"]
        names, draws = [names[i] for i in keep], draws[:, keep]
        title += " (beta tied to alpha)"
    return _pair_plot(names, draws, base.params, title, path)


@styled
def pairs_delta(inputs: Inputs, path: Path) -> Path | None:
    keys = list(inputs.outcome.deltas)
    keys.sort(key=lambda k: k != HEADLINE)
    for key in keys:
        law = inputs.law(key)
        if law is None or law.draws is None:
            continue
        params = {n: law.point.params.get(n) for n in law.names}
        made = _pair_plot(list(law.names), law.draws, params,
                          f"{key} [{law.name}]: bootstrap draws", path)  # fmt: skip
        if made:
            return made
    return None


@styled
def law_residuals(inputs: Inputs, path: Path) -> Path | None:
    """Per setting, each fitted law's log residuals against D/N, N and G, with the median per
    value joined by a line: where a law bends away from the data, its line leaves zero."""
    quant, laws = inputs.outcome.quant, inputs.outcome.laws
    keys = [k for k, fits in laws.items() if sum(not isinstance(f, str) for f in fits.values()) > 1
            and quant.loc[quant["fit_key"] == k, "tokens"].nunique() > 1]  # fmt: skip
    if not keys:
        return None
    axes_of = (("D/N", "tokens per parameter D/N"), ("n_params", UNITS["n_params"]),
               ("G", UNITS["G"]))  # fmt: skip
    fig, axes = style.figure(len(keys), 3, 3.6, 2.6)
    for row, key in zip(axes, keys, strict=True):
        part = quant[quant["fit_key"] == key].reset_index(drop=True)
        part = part.assign(**{"D/N": part["tokens"] / part["n_params"]})
        everything = []
        for i, (name, fit) in enumerate(laws[key].items()):
            if isinstance(fit, str):
                continue
            resid = np.log(_predict(fit, part)) - np.log(part["delta"].to_numpy())
            everything.append(resid)
            for ax, (column, _) in zip(row, axes_of, strict=True):
                x = part[column].to_numpy(float)
                ax.scatter(x, resid, s=5, color=f"C{i}", alpha=0.25, lw=0)
                centres, med = _binned_median(x, resid, binned=column == "D/N")
                ax.plot(centres, med, color=f"C{i}", lw=1.4, marker="o", ms=3, label=name)
        spread = np.concatenate(everything)
        spread = spread[np.isfinite(spread)]
        centre = float(np.median(spread)) if spread.size else 0.0
        mad = float(np.median(np.abs(spread - centre))) if spread.size else 0.0
        half = max(6 * 1.4826 * mad, 0.05) if spread.size else 1.0
        for ax, (column, label) in zip(row, axes_of, strict=True):
            ax.axhline(0, color="k", lw=0.7)
            if column == "G":
                style.group_axis(ax, part["G"])
            else:
                style.count_axis(ax, "x")
            ax.set(title=key, xlabel=label, ylabel="log predicted - log measured")
            ax.set_ylim(centre - half, centre + half)  # beyond: outliers (listed in the details)
        style.legend(row[0], fontsize=6)
    return style.save(fig, path)


def _predict(fit: LawFit, rows: pd.DataFrame) -> np.ndarray:
    from qat_sweep.analysis.law.delta_fit import predict_delta_rows

    return predict_delta_rows(fit, rows)


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


@styled
def effective_params(inputs: Inputs, path: Path) -> Path | None:
    """eff along N at D = 20 N, G = 128, from the fitted range out to 70B, bands from the
    draws; the fitted N range shaded, the extrapolation dotted and its factor written."""
    base = inputs.outcome.base
    if base.params.get("A") is None:
        return None
    fitted = inputs.outcome.result["base"]["range"]["n_params"]
    grid = np.geomspace(fitted[0], max(EFF_LARGEST_N, fitted[1]), CURVE_POINTS)
    inside = grid <= fitted[1] * (1 + 1e-9)
    base_draws = inputs.saved.draws.get("base")
    fig, axes = style.figure(1, 1, 5.2, 3.4)
    ax = axes[0, 0]
    drawn = False
    for key in inputs.outcome.deltas:
        law = inputs.law(key)
        if law is None:
            continue
        points = Points.at(grid, EFF_TOKENS_PER_PARAM * grid, EFF_G, EFF_G)
        delta, draws = _draws(law, points)
        if not np.isfinite(delta).all():
            continue  # a per-G law without G = 128
        eff = effective_multiplier(base.params, grid, delta)
        color = inputs.palette.setting(key)
        last = max(int(inside.sum()) - 1, 0)  # the dotted part starts where the data end
        ax.plot(grid[: last + 1], eff[: last + 1], color=color, label=f"{key} [{law.name}]")
        ax.plot(grid[last:], eff[last:], color=color, ls=":")
        if draws is not None and base_draws is not None:
            size = min(len(draws), len(base_draws))
            b = dict(zip(BASE_PARAMS, base_draws[:size].T[:, :, None], strict=True))
            style.band(ax, grid, effective_multiplier(b, grid, draws[:size]), color)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axvspan(fitted[0], fitted[1], color="0.85", zorder=0, label="fitted N range")
    factor = grid[-1] / fitted[1]
    ax.annotate(f"extrapolation: up to {factor:,.0f}x the largest fitted N",
                xy=(0.98, 0.04), xycoords="axes fraction", ha="right", fontsize=7, color="0.3")  # fmt: skip
    style.count_axis(ax, "x")
    ax.set(xlabel=UNITS["n_params"], ylabel="effective parameter multiplier",
           title=f"eff = (A / (A + delta N^alpha))^(1/alpha), D = {EFF_TOKENS_PER_PARAM} N, G = {EFF_G}")  # fmt: skip
    ax.set_ylim(0, 1.05)
    style.legend(ax, fontsize=6, loc="lower left")
    return style.save(fig, path)


@styled
def decomposition(result: dict[str, Any], path: Path) -> Path | None:
    if not result.get("available"):
        return None
    pts = result["points"]
    fig, axes = style.figure(1, 1, 4.0, 3.6)
    ax = axes[0, 0]
    ax.scatter(pts["sum"], pts["w4a4"], s=12, color="0.3")
    xs = np.array([min(pts["sum"]), max(pts["sum"])])
    ax.plot(xs, result["k_prime"] * xs, color="C3",
            label=f"k' = {result['k_prime']:.3f} (paper {paper.FINDINGS['decomposition_k']})")  # fmt: skip
    ax.set(xlabel="delta_W4A16 + delta_W16A4 (nats)", ylabel="delta_W4A4 (nats)",
           title="Decomposition of the W4A4 error")  # fmt: skip
    style.legend(ax)
    return style.save(fig, path)


@styled
def ratio_heatmap(result: dict[str, Any], path: Path) -> Path | None:
    panels = [(k, v) for k, v in result.items() if v.get("available")]
    if not panels:
        return None
    fig, axes = style.figure(1, len(panels), 4.4, 3.4)
    for ax, (label, item) in zip(axes.flat, panels, strict=True):
        frame = pd.DataFrame(item["grid"]).astype(float)
        image = ax.imshow(frame.to_numpy(), cmap="coolwarm", vmin=0.5, vmax=1.5, aspect="auto")
        ax.set_xticks(range(len(frame.columns)), frame.columns)
        ax.set_yticks(range(len(frame.index)), frame.index)
        ax.grid(False)
        for (r, c), v in np.ndenumerate(frame.to_numpy()):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set(xlabel="group size G", ylabel="tokens per parameter D/N",
               title=f"R = delta_W16A4 / delta_W4A16 ({label})")  # fmt: skip
        fig.colorbar(image, ax=ax, label="R")
    return style.save(fig, path)


@styled
def contours(deltas: dict[str, LawFit], path: Path, g: float = 128) -> Path | None:
    keys = [k for k, f in deltas.items()
            if f.params.get("gamma_N") is not None and f.params.get("gamma_D") is not None]  # fmt: skip
    if not keys:
        return None
    n_grid, d_grid = np.geomspace(5e7, 1e10, 60), np.geomspace(5e9, 1e12, 60)
    nn, dd = np.meshgrid(n_grid, d_grid)
    fig, axes = _setting_panels(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        params = {p: (v if v is not None else 0.0) for p, v in deltas[key].params.items()}
        cs = ax.contour(nn, dd, delta_loss(params, nn, dd, g), levels=8, cmap="viridis")
        ax.clabel(cs, fontsize=6, fmt="%.3f")
        slope = params["gamma_N"] / params["gamma_D"] if params["gamma_D"] else float("nan")
        style.count_axis(ax, "x")
        style.count_axis(ax, "y")
        ax.set(xlabel=UNITS["n_params"], ylabel=UNITS["tokens"],
               title=f"iso-delta {key}, G = {g:g}, slope {slope:.2f}")  # fmt: skip
    return style.save(fig, path)


@styled
def bars_per_group(values: dict[str, dict[str, float]], title: str, ylabel: str,
                   path: Path) -> Path | None:  # fmt: skip
    """Grouped bars: one group per G, one bar per series (FC2 reduction, INT4 - FP4)."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    groups = list(dict.fromkeys(g for series in values.values() for g in series))
    fig, axes = style.figure(1, 1, 4.6, 3.0)
    ax = axes[0, 0]
    width = 0.8 / len(values)
    for i, (name, series) in enumerate(values.items()):
        xs = np.arange(len(groups)) + i * width
        ax.bar(xs, [series.get(g, np.nan) for g in groups], width=width, label=name,
               color=style.SETTING_COLORS[i])  # fmt: skip
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.axhline(0, color="k", lw=0.7)
    ax.set(xlabel="group size G", ylabel=ylabel, title=title)
    style.legend(ax)
    return style.save(fig, path)


def make_all(outcome: Any, saved: SavedFit, plots_dir: Path,
             runs_root: Path | None = None) -> dict[str, Path]:  # fmt: skip
    """Every figure for the report, keyed by a short name; stale figures are removed first.
    `runs_root` holds the run directories (their metrics.jsonl give the training curves)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in (*plots_dir.glob("*.png"), *plots_dir.glob("*.svg")):
        old.unlink()
    table = outcome.table
    settings = table.loc[table["scheme"] != "bf16", "fit_key"].dropna()
    palette = Palette(settings, *(v[np.isfinite(v)] for v in cell_values(table)))
    inputs = Inputs(outcome, saved, palette, runs_root)
    an = outcome.result["analyses"]
    p = plots_dir
    figures = {
        "bf16_law": bf16_law(inputs, p / "bf16_law.png"),
        "delta_vs_N": delta_trend(inputs, "n_params", p / "delta_vs_N.png"),
        "delta_vs_D": delta_trend(inputs, "tokens", p / "delta_vs_D.png"),
        "delta_vs_G": delta_trend(inputs, "G", p / "delta_vs_G.png"),
        "predicted_vs_measured": predicted_vs_measured(inputs, p / "predicted_vs_measured.png"),
        "twin_curves": twin_curves(inputs, p / "twin_curves.png"),
        "delta_vs_lr": delta_vs_lr(inputs, p / "delta_vs_lr.png"),
        "residuals": residuals(inputs, p / "residuals.png"),
        "pairs_bf16": pairs_bf16(inputs, p / "pairs_bf16.png"),
        "pairs_delta": pairs_delta(inputs, p / "pairs_delta.png"),
        "law_residuals": law_residuals(inputs, p / "law_residuals.png"),
        "effective_params": effective_params(inputs, p / "effective_params.png"),
        "decomposition": decomposition(an["decomposition"], p / "decomposition.png"),
        "ratio_R": ratio_heatmap(an["ratio_R"], p / "ratio_R.png"),
        "contours": contours(outcome.paper or outcome.deltas, p / "contours.png"),
        "fc2_8bit": bars_per_group(
            {k: v.get("reduction_per_G", {}) for k, v in an["fc2_8bit"].items() if k != "paper"},
            "delta reduction with 8-bit FC2 input", "1 - delta_fc2a8 / delta", p / "fc2_8bit.png",
        ),
        "int4_vs_fp4": bars_per_group(
            {"w4a4": an["int4_vs_fp4"].get("int4_minus_fp4_per_G", {})},
            "INT4 - FP4 delta per G (negative: INT4 better)", "delta_INT4 - delta_FP4 (nats)",
            p / "int4_vs_fp4.png",
        ),
    }  # fmt: skip
    return {k: v for k, v in figures.items() if v is not None}
