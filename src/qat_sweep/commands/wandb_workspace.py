"""`qat-sweep wandb-workspace sweep=NAME --entity E --project P`: save a wandb workspace of the sweep
(loss curves by twin, delta panels, per-site statistics) and print its URL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qat_sweep.common import split_overrides, write_json_atomic
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.spec import PlanError
from qat_sweep.sweep.workspace import build_workspace, workspace_spec

USAGE = (
    "qat-sweep wandb-workspace sweep=NAME (--entity E --project P | --dry-run [--out FILE]) "
    "[--name TITLE] [overrides...]"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qat-sweep wandb-workspace", usage=USAGE)
    p.add_argument("--entity", help="wandb entity (user or team)")
    p.add_argument("--project", help="wandb project the sweep's runs are in")
    p.add_argument("--name", help="workspace title (default: qat-sweep <sweep>)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write the workspace's spec (panels, grouping, colours) to a file; contact no server",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="where --dry-run writes the spec (default: wandb-workspace-<sweep>.json)",
    )
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
        if not args.dry_run and not (args.entity and args.project):
            raise PlanError(f"--entity and --project are needed to save (or --dry-run); {USAGE}")
        if args.out is not None and not args.dry_run:
            raise PlanError("--out goes with --dry-run (the spec file it writes)")
        runs = plan_sweep(sweep, overrides, strict=False)
        if not args.dry_run and not wandb_api.has_api_key():
            raise PlanError("no wandb API key: run `wandb login` or set WANDB_API_KEY first")
    except PlanError as err:
        print(f"qat-sweep wandb-workspace: error: {err}", file=sys.stderr)
        return 2
    entity, project = args.entity or "ENTITY", args.project or "PROJECT"
    workspace = build_workspace(sweep, entity, project, runs, args.name)
    if args.dry_run:
        out = args.out or Path(f"wandb-workspace-{Path(sweep).stem}.json")
        spec = workspace_spec(workspace, runs)
        write_json_atomic(out, spec)
        panels = sum(len(section["panels"]) for section in spec["sections"])
        print(
            f"workspace spec for sweep {sweep} ({len(runs)} runs, {len(spec['sections'])} "
            f"sections, {panels} panels, colours per run): {out}; nothing was sent"
        )
        return 0
    try:
        url = wandb_api.save_workspace(workspace)
    except Exception as err:  # the server refused (permissions, unknown project, network)
        print(f"qat-sweep wandb-workspace: saving failed: {err}", file=sys.stderr)
        return 1
    print(f"workspace for sweep {sweep} ({len(runs)} runs): {url}")
    return 0
