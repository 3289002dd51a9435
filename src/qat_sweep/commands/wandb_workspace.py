"""`qat-sweep wandb-workspace sweep=NAME --entity E --project P`: save a wandb workspace of the sweep
(loss curves by twin, delta panels, per-site statistics) and print its URL."""

from __future__ import annotations

import argparse
import sys

from qat_sweep.common import split_overrides
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.spec import PlanError
from qat_sweep.sweep.workspace import build_workspace

USAGE = "qat-sweep wandb-workspace sweep=NAME --entity E --project P [--name TITLE] [overrides...]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qat-sweep wandb-workspace", usage=USAGE)
    p.add_argument("--entity", required=True, help="wandb entity (user or team)")
    p.add_argument("--project", required=True, help="wandb project the sweep's runs are in")
    p.add_argument("--name", help="workspace title (default: qat-sweep <sweep>)")
    return p


def main(argv: list[str]) -> int:
    """Run `qat-sweep wandb-workspace`; returns the process exit code."""
    from qat_sweep import wandb_api

    pairs, flags = split_overrides(argv, None, _parser())
    sweep = pairs.pop("sweep", None)
    overrides = [f"{k}={v}" for k, v in pairs.items()]
    try:
        args = _parser().parse_args(flags)
        if not sweep:
            raise PlanError(f"missing sweep=NAME; usage: {USAGE}")
        runs = plan_sweep(sweep, overrides, strict=False)
        if not wandb_api.has_api_key():
            raise PlanError("no wandb API key: run `wandb login` or set WANDB_API_KEY first")
    except PlanError as err:
        print(f"qat-sweep wandb-workspace: error: {err}", file=sys.stderr)
        return 2
    workspace = build_workspace(sweep, args.entity, args.project, runs, args.name)
    try:
        url = wandb_api.save_workspace(workspace)
    except Exception as err:  # the server refused (permissions, unknown project, network)
        print(f"qat-sweep wandb-workspace: saving failed: {err}", file=sys.stderr)
        return 1
    print(f"workspace for sweep {sweep} ({len(runs)} runs): {url}")
    return 0
