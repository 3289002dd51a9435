"""Optional mirror of a fit to wandb. A wandb problem never fails the fit: it becomes a warning."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def log_fit(
    target: str, result: dict[str, Any], table: pd.DataFrame, figures: dict[str, Path]
) -> bool:
    """Log the parameters, tables and plots to a `fit` run in ENTITY/PROJECT (respects WANDB_MODE)."""
    try:
        import wandb

        entity, _, project = target.partition("/")
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        run = wandb.init(
            entity=entity or None, project=project or entity, job_type="fit", mode=mode, reinit=True
        )
        summary: dict[str, Any] = {f"base/{k}": v for k, v in result["base"]["params"].items()}
        for key, fit in result["delta"].items():
            summary.update({f"delta/{key}/{k}": v for k, v in fit["params"].items()})
            summary[f"delta/{key}/rel_error"] = fit.get("rel_error")
        run.summary.update(summary)
        clean = table.astype(str)
        run.log(
            {
                "runs": wandb.Table(dataframe=clean),
                **{f"plots/{name}": wandb.Image(str(path)) for name, path in figures.items()},
            }
        )
        run.finish()
        return True
    except Exception as err:  # any wandb failure (network, auth, version) must not lose the fit
        print(f"warning: wandb logging to {target} failed: {err}", file=sys.stderr)
        return False
