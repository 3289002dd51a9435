"""Optional mirror of a fit to wandb. A wandb problem never fails the fit: it becomes a warning.

The fit becomes one `fit` run (parameters with 95% intervals, the run table, every plot) in
the sweep's group, and each quantized run of the sweep gets `fit/predicted_delta` and
`fit/residual` in its own summary, so the dashboard can plot measured against predicted delta.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from qat_sweep.analysis.law.formulas import Points, fitted_law

from qat_sweep import wandb_api


def predicted_deltas(result: dict[str, Any], table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per quantized run: the selected law's delta, the residual (measured - predicted) and
    the law's name (`fit/law`).

    `table` is the fit's run table (`runs.csv`: run_key, scheme, format, n_params, tokens, G,
    group_size, delta); runs whose setting has no delta fit, or that lack G or a measured delta,
    are left out.
    """
    out: dict[str, Any] = {}
    base = (result.get("base") or {}).get("params") or {}
    laws = {
        key: fitted_law(fit, base if base.get("A") is not None else None)
        for key, fit in result.get("delta", {}).items()
    }
    for row in table.itertuples(index=False):
        law = laws.get(f"{row.scheme}/{row.format}")
        if row.scheme == "bf16" or law is None or all(v is None for v in law.params.values()):
            continue
        group = getattr(row, "group_size", None)
        predicted = float(law.delta(Points.at(row.n_params, row.tokens, row.G, group))[0])
        if math.isfinite(predicted) and math.isfinite(row.delta):
            out[str(row.run_key)] = {
                "fit/predicted_delta": predicted,
                "fit/residual": float(row.delta) - predicted,
                "fit/law": law.law.name,
            }
    return out


def fit_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The laws' parameters (each setting's selected delta law, named in delta/<key>/law) and
    their 95% intervals as flat summary keys."""
    parts = {"base": result["base"], **{f"delta/{k}": v for k, v in result["delta"].items()}}
    summary: dict[str, Any] = {}
    for prefix, fit in parts.items():
        for name, value in fit["params"].items():
            summary[f"{prefix}/{name}"] = value
            interval = (fit.get("ci95") or {}).get(name)
            if interval:
                summary[f"{prefix}/{name}_ci95_lo"], summary[f"{prefix}/{name}_ci95_hi"] = interval
        if "rel_error" in fit:
            summary[f"{prefix}/rel_error"] = fit["rel_error"]
        if prefix != "base":
            summary[f"{prefix}/law"] = fit.get("law", "paper")  # whose parameters these are
    return summary


def log_fit(
    target: str,
    result: dict[str, Any],
    table: pd.DataFrame,
    figures: dict[str, Path],
    out_dir: Path | None = None,
    sweep: str | None = None,
    sync_hint: str | None = None,
) -> bool:
    """Log the fit to a `fit` run in ENTITY/PROJECT (respects WANDB_MODE), then write each
    quantized run's predicted delta into that run's summary (online only; offline runs get it
    from `qat-sweep sync`). The run's local files go to `<out_dir>/wandb`, beside the fit's
    outputs, where `qat-sweep sync` finds an offline fit run to upload. `sync_hint` is the sync
    command that writes the predictions later, with the fit's own arguments."""
    sweep = sweep or _single_sweep(table)
    try:
        import wandb

        entity, _, project = target.partition("/")
        project = project or entity
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        run = wandb.init(
            entity=entity or None,
            project=project,
            job_type="fit",
            group=sweep,  # the sweep workspace filters on the group
            name=f"fit-{sweep}" if sweep else None,
            config={"sweep": sweep, "settings": result.get("settings")},
            mode=mode,
            dir=str(out_dir) if out_dir is not None else None,
            reinit="finish_previous",
        )
        run.summary.update(fit_summary(result))
        images = [wandb.Image(str(path), caption=name) for name, path in figures.items()]
        run.log(
            {
                "runs": wandb.Table(dataframe=table.astype(str)),
                **({"plots": images} if images else {}),  # one media key: one workspace panel
            }
        )
        run.finish()
        if mode == "online" and sweep:
            values = predicted_deltas(result, table)
            write_predictions(entity or None, project, sweep, values, sync_hint)
        return True
    except Exception as err:  # any wandb failure (network, auth, version) must not lose the fit
        print(f"warning: wandb logging to {target} failed: {err}", file=sys.stderr)
        return False


def _single_sweep(table: pd.DataFrame) -> str | None:
    """The sweep all rows of the table come from, when there is exactly one."""
    sweeps = table["sweep"].dropna().unique() if "sweep" in table else []
    return str(sweeps[0]) if len(sweeps) == 1 else None


def write_predictions(
    entity: str | None,
    project: str,
    sweep: str,
    values: dict[str, dict[str, float]],
    sync_hint: str | None = None,
) -> None:
    """`fit/*` values into the summaries of the sweep's runs on the server; runs not found
    there get them from ``sync_hint`` (the `qat-sweep sync` command) once synced."""
    from qat_sweep.train.tracking import wandb_id

    entity = entity or wandb_api.default_entity()
    failed = 0
    for run_key, summary in values.items():
        try:
            wandb_api.update_summary(f"{entity}/{project}/{wandb_id(sweep, run_key)}", summary)
        except Exception:  # a run that was never synced: `qat-sweep sync` writes it later
            failed += 1
    print(
        f"wandb: fit/predicted_delta written to {len(values) - failed} run(s)"
        + (
            f", {failed} not found (sync them, then `{sync_hint or f'qat-sweep sync sweep={sweep}'}`)"
            if failed
            else ""
        )
    )


def fit_predictions(fit_dir: Path) -> dict[str, dict[str, float]]:
    """`fit/*` summary values per run_key from a `qat-sweep fit` output directory ({} if none)."""
    import json

    import pandas as pd

    fit_json, table = fit_dir / "fit.json", fit_dir / "runs.csv"
    if not (fit_json.is_file() and table.is_file()):
        return {}
    return predicted_deltas(
        json.loads(fit_json.read_text()), pd.read_csv(table, dtype={"group_size": str})
    )
