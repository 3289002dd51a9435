"""`qat-sweep wandb-workspace sweep=NAME --entity E --project P`: a saved wandb workspace that
shows a sweep the way the law reads it.

Built with `wandb-workspaces` from the sweep's plan (every planned run gets its colour, so runs
still training are coloured too): runs are filtered to the sweep's group; each quantized run is
coloured by its format (hue) and G (shade, darker = coarser), BF16 twins are black. The panels
put each quantized run beside its BF16 twin, draw delta against N, D and G faceted by the other
axes on linear y axes (negative deltas stay), and the fit's predicted delta beside the measured
one. `workspace_spec` is the same workspace as a file a person can read.
"""

from __future__ import annotations

from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr

from qat_sweep.common import format_count
from qat_sweep.delta import BF16
from qat_sweep.model.precision import SITES, base_format  # per-site metrics: quant/<site>/<stat>
from qat_sweep.sweep.spec import PlannedRun
from qat_sweep.train.tracking import delta_facets, group_elems, wandb_id

FORMAT_CMAPS = {"int4": "Blues", "int4_sym": "Purples", "fp4": "Oranges", "mxfp4": "Reds"}
FORMAT_CMAPS |= {"nvfp4": "Greens", "mxint4": "PuBu", "nvint4": "YlGn"}  # labels: by base format
BF16_COLOUR = "#000000"
LOSS = "loss_smoothed"  # the trainer's bias-corrected EMA, the paper's metric at the end
DELTA = wr.SummaryMetric("final/delta")


def run_colours(runs: list[PlannedRun]) -> dict[str, str]:
    """wandb run id -> colour: hue by format, shade by G (rank among the sweep's Gs)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    def g_of(run: PlannedRun) -> float:
        hidden = run.config["model"]["hidden_size"]
        return float(group_elems(run.group_size, hidden) or 0)

    sizes = sorted({g_of(r) for r in runs if r.scheme != BF16})
    colours = {}
    for run in runs:
        run_id = wandb_id(str(run.config["sweep_name"]), run.run_key)
        if run.scheme == BF16:
            colours[run_id] = BF16_COLOUR
            continue
        shade = 0.4 + 0.55 * sizes.index(g_of(run)) / max(len(sizes) - 1, 1)
        cmap = FORMAT_CMAPS.get(base_format(run.format), "Greys")
        colours[run_id] = to_hex(colormaps[cmap](shade))
    return colours


def _twin_panels() -> list[Any]:
    return [
        wr.ScatterPlot(
            title="final loss of each quantized run against its BF16 twin's (diagonal: delta 0)",
            x=wr.SummaryMetric("final/bf16_loss"),
            y=wr.SummaryMetric("final/loss"),
        ),
        wr.LinePlot(
            title="smoothed loss vs tokens per run (BF16 twins black)",
            x="tokens",
            y=[LOSS],
            log_x=True,
            log_y=True,
        ),
        wr.LinePlot(
            title="smoothed loss vs tokens by scheme (mean, min-max band); bf16 = the twins",
            x="tokens",
            y=[LOSS],
            groupby=wr.Config("scheme"),
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            log_x=True,
            log_y=True,
        ),
        wr.ScatterPlot(
            title="final loss vs N: each twin (black) beside its quantized runs",
            x=wr.Config("n_params"),
            y=wr.SummaryMetric("final/loss"),
            log_x=True,
        ),
        wr.LinePlot(title="validation loss vs tokens per run", x="tokens", y=["val_loss"]),
    ]


def _facet_panels(runs: list[PlannedRun]) -> list[tuple[str, list[Any]]]:
    """Delta against N at each D, against D at each N, against G in each (N, D) cell, on
    linear y axes (a negative delta is data). Each panel's y key is a summary key only the
    runs of its facet carry (`tracking.delta_facets`): wandb panels cannot filter runs."""
    cells = dict.fromkeys((r.model, r.tokens) for r in runs if r.scheme != BF16)
    by_d, by_n, by_cell = {}, {}, {}
    for model, tokens in cells:
        at_d, at_n, at_cell = delta_facets(model, tokens)
        by_d[at_d] = f"delta vs N at D = {format_count(tokens)}"
        by_n[at_n] = f"delta vs D at N = {model}"
        by_cell[at_cell] = f"delta vs G at N = {model}, D = {format_count(tokens)}"

    def scatter(axis: str, keys: dict[str, str]) -> list[Any]:
        return [
            wr.ScatterPlot(title=title, x=wr.Config(axis), y=wr.SummaryMetric(key), log_x=True)
            for key, title in keys.items()
        ]

    return [
        ("Delta vs N at each D", scatter("n_params", by_d)),
        ("Delta vs D at each N", scatter("tokens", by_n)),
        ("Delta vs G in each (N, D) cell", scatter("group_elems", by_cell)),
    ]


def _fit_panels() -> list[Any]:
    return [
        wr.ScatterPlot(
            title="measured delta vs the fit's predicted delta (after qat-sweep fit + sync)",
            x=wr.SummaryMetric("fit/predicted_delta"),
            y=DELTA,
        ),
        wr.ScatterPlot(
            title="measured - predicted delta vs N",
            x=wr.Config("n_params"),
            y=wr.SummaryMetric("fit/residual"),
            log_x=True,
        ),
        wr.ParallelCoordinatesPlot(
            title="N, D, G -> delta",
            columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("n_params"), log=True),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("tokens"), log=True),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("group_elems"), log=True),
                wr.ParallelCoordinatesPlotColumn(metric=DELTA),
            ],
        ),
        wr.MediaBrowser(title="plots of the fit run", media_keys=["plots"]),
    ]


def _site_panels() -> list[Any]:
    return [
        wr.LinePlot(
            title="FC2 input kurtosis vs tokens", x="tokens", y=["quant/fc2/kurtosis"], log_y=True
        ),
        wr.LinePlot(
            title="FC2 input quantization error ||x_q - x||^2 / ||x||^2 vs tokens",
            x="tokens",
            y=["quant/fc2/act_nmse"],
        ),
        wr.LinePlot(
            title="input kurtosis per site",
            x="tokens",
            y=[f"quant/{site}/kurtosis" for site in SITES],
            log_y=True,
        ),
        wr.LinePlot(
            title="input quantization error per site",
            x="tokens",
            y=[f"quant/{site}/act_nmse" for site in SITES],
        ),
    ]


def build_workspace(
    sweep: str, entity: str, project: str, runs: list[PlannedRun], name: str | None = None
) -> ws.Workspace:
    """The workspace object (nothing is sent anywhere until it is saved)."""
    sections = [
        ("Twins: each quantized run beside its BF16 twin", _twin_panels()),
        *_facet_panels(runs),
        ("Fit: predicted beside measured delta", _fit_panels()),
        ("FC2 input and the other quantization sites", _site_panels()),
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"qat-sweep {sweep}",
        sections=[
            ws.Section(name=title, panels=panels, is_open=True) for title, panels in sections
        ],
        settings=ws.WorkspaceSettings(x_axis="tokens", max_runs=max(10, len(runs) + 1)),
        runset_settings=ws.RunsetSettings(
            filters=expr.And(expr.Metric("Group") == sweep),  # the runs and fit run of this sweep
            pinned_columns=[
                *(f"config:{k}" for k in ("n_params", "tokens", "scheme", "format", "group_size")),
                "summary:final/loss",
                "summary:final/delta",
                "summary:fit/predicted_delta",
            ],
            run_settings={
                run_id: ws.RunSettings(color=colour) for run_id, colour in run_colours(runs).items()
            },
        ),
    )


def workspace_spec(workspace: ws.Workspace, runs: list[PlannedRun]) -> dict[str, Any]:
    """What `build_workspace` would save, for a person to read (`wandb-workspace --dry-run`):
    the filter, each section's panels with their axes and grouping, and each run's colour."""
    colours = run_colours(runs)
    return {
        "name": workspace.name,
        "entity": workspace.entity,
        "project": workspace.project,
        "runs": "the wandb runs whose group is the sweep's name (its runs and its fit run)",
        "sections": [
            {"name": section.name, "panels": [_panel_spec(p) for p in section.panels]}
            for section in workspace.sections
        ],
        "pinned_columns": list(workspace.runset_settings.pinned_columns),
        "colours": {
            "rule": "BF16 twins black; quantized runs: hue by format, shade by G (darker = coarser)",
            "runs": {
                r.run_key: {
                    "colour": colours[wandb_id(str(r.config["sweep_name"]), r.run_key)],
                    "scheme": r.scheme,
                    "format": r.format,
                    "G": r.group_size,
                }
                for r in runs
            },
        },
    }


def _panel_spec(panel: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type(panel).__name__, "title": panel.title}
    for field in ("x", "y", "log_x", "log_y", "groupby", "groupby_aggfunc", "media_keys"):
        value = getattr(panel, field, None)
        if value not in (None, False, []):
            spec[field] = _metric_name(value)
    if isinstance(panel, wr.ParallelCoordinatesPlot):
        spec["columns"] = [_metric_name(c.metric) for c in panel.columns]
    return spec


def _metric_name(value: Any) -> Any:
    """`config:n_params`, `summary:final/delta`, a history key as is."""
    if isinstance(value, list):
        return [_metric_name(v) for v in value]
    if isinstance(value, wr.Config):
        return f"config:{value.name}"
    if isinstance(value, wr.SummaryMetric):
        return f"summary:{value.name}"
    return value
