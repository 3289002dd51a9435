"""`qat-sweep wandb-workspace sweep=NAME --entity E --project P`: a saved wandb workspace that
shows a sweep the way the law reads it.

Built with `wandb-workspaces` from the sweep's plan (every planned run gets its colour, so runs
still training are coloured too): runs are filtered to the sweep's group; each quantized run is
coloured by its format (hue) and G (shade, darker = coarser), BF16 twins are black.
"""

from __future__ import annotations

from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr

from qat_sweep.model.precision import SITES, base_format  # per-site metrics: quant/<site>/<stat>
from qat_sweep.sweep.spec import PlannedRun
from qat_sweep.train.tracking import group_elems, wandb_id

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

    sizes = sorted({g_of(r) for r in runs if r.scheme != "bf16"})
    colours = {}
    for run in runs:
        run_id = wandb_id(str(run.config["sweep_name"]), run.run_key)
        if run.scheme == "bf16":
            colours[run_id] = BF16_COLOUR
            continue
        shade = 0.4 + 0.55 * sizes.index(g_of(run)) / max(len(sizes) - 1, 1)
        cmap = FORMAT_CMAPS.get(base_format(run.format), "Greys")
        colours[run_id] = to_hex(colormaps[cmap](shade))
    return colours


def _loss_panels() -> list[Any]:
    return [
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
        wr.LinePlot(
            title="smoothed loss vs tokens per run (BF16 twins black)",
            x="tokens",
            y=[LOSS],
            log_x=True,
            log_y=True,
        ),
        wr.LinePlot(title="validation loss vs tokens per run", x="tokens", y=["val_loss"]),
    ]


def _delta_panels() -> list[Any]:
    def scatter(axis: str, title: str, log: bool = True) -> wr.ScatterPlot:
        return wr.ScatterPlot(title=title, x=wr.Config(axis), y=DELTA, log_x=log, log_y=True)

    return [
        scatter("n_params", "final delta vs N (non-embedding parameters)"),
        scatter("tokens", "final delta vs D (tokens)"),
        scatter("group_elems", "final delta vs G (elements per group)"),
        wr.ScatterPlot(
            title="measured vs fitted delta (after qat-sweep fit + sync)",
            x=wr.SummaryMetric("fit/predicted_delta"),
            y=DELTA,
            log_x=True,
            log_y=True,
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
        ("Loss vs tokens", _loss_panels()),
        ("Delta vs N, D, G", _delta_panels()),
        ("FC2 input and the other quantization sites", _site_panels()),
        ("Fit", [wr.MediaBrowser(title="plots of the fit run", media_keys=["plots"])]),
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
