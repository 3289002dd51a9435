"""`qat-sweep sync sweep=NAME`: upload a sweep's offline wandb runs, then write each run's delta and
the fit's predictions into its wandb summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from qat_sweep import wandb_api
from qat_sweep.analysis.wandb_log import fit_predictions
from qat_sweep.common import InputError, command_hint, split_overrides
from qat_sweep.record import RUNS_ROOT, sweep_dir, sweep_records
from qat_sweep.sweep.sync import SyncError, is_uploaded, offline_files, summary_updates
from qat_sweep.train.tracking import wandb_path

USAGE = (
    "qat-sweep sync sweep=NAME [paths.runs=ROOT] [--entity E] [--project P] [--fit DIR] [--dry-run]"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qat-sweep sync", usage=USAGE, description=__doc__)
    p.add_argument("--entity", help="wandb entity (default: each run's own, else your default)")
    p.add_argument("--project", help="wandb project (default: each run's own)")
    p.add_argument("--fit", type=Path, help="fit output directory (default: reports/<sweep>)")
    p.add_argument("--dry-run", action="store_true", help="show what would happen, upload nothing")
    return p


def _parse(argv: list[str]) -> tuple[str, Path, argparse.Namespace]:
    options, rest = split_overrides(argv, {"sweep", "paths.runs"}, _parser())
    args = _parser().parse_args(rest)
    if not options.get("sweep"):
        raise SyncError(f"missing sweep=NAME; usage: {USAGE}")
    runs = sweep_dir(options.get("paths.runs", RUNS_ROOT), options["sweep"])
    if not runs.is_dir():
        raise SyncError(f"no run directory for sweep {options['sweep']!r}: {runs} not found")
    return options["sweep"], runs, args


def _brief(values: dict[str, Any]) -> str:
    shown = ("final/status", "final/loss", "final/delta", "fit/predicted_delta")
    return ", ".join(
        f"{k.split('/')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('/')[-1]}={v}"
        for k, v in values.items()
        if k in shown and v is not None
    )


def main(argv: list[str]) -> int:
    """Run `qat-sweep sync`; returns the process exit code."""
    try:
        sweep, sweep_dir, args = _parse(argv)
        if args.fit is not None and not (args.fit / "fit.json").is_file():
            raise SyncError(f"--fit {args.fit}: no fit.json there (a `qat-sweep fit` --out DIR)")
        if not args.dry_run and not wandb_api.has_api_key():
            raise SyncError("no wandb API key: run `wandb login` or set WANDB_API_KEY first")
    except (SyncError, InputError) as err:
        print(f"qat-sweep sync: error: {err}", file=sys.stderr)
        return 2
    fit_dir = args.fit or Path("reports") / sweep
    files = offline_files(sweep_dir) + offline_files(fit_dir)  # the runs, then the fit run
    pending = [f for f in files if not is_uploaded(f)]
    print(
        f"sweep {sweep}: {len(files)} offline run file(s) in {sweep_dir} and {fit_dir}, "
        f"{len(files) - len(pending)} already uploaded, {len(pending)} to upload"
    )
    code = 0
    if pending:
        code = wandb_api.sync_offline(pending, args.entity, args.project, dry_run=args.dry_run)
        if code:
            print(f"qat-sweep sync: wandb sync exited with {code}", file=sys.stderr)
    predictions = fit_predictions(fit_dir)
    if not predictions:
        fit_hint = command_hint("fit", [a for a in argv if "=" in a], "--out", str(fit_dir))
        print(f"no fit in {fit_dir} (`{fit_hint}`): fit/* not written")
    records = [found.record for found in sweep_records(sweep_dir) if found.record is not None]
    updates = summary_updates(records, sweep_dir, predictions)
    with_delta = sum("final/delta" in v for v in updates.values())
    print(
        f"{len(updates)} run summaries from the records: {with_delta} with final/delta, "
        f"{sum('fit/predicted_delta' in v for v in updates.values())} with fit/predicted_delta"
    )
    if args.dry_run:
        for run_key, values in updates.items():
            print(f"  would update {run_key}: {_brief(values)}")
        return code
    return _update(updates, records, args) or code


def _update(
    updates: dict[str, dict[str, Any]], records: list[dict[str, Any]], args: argparse.Namespace
) -> int:
    """Write the summaries through the public API; a run the server lacks is reported."""
    by_key = {r["run_key"]: r for r in records}
    default_entity: str | None = None
    failed = []
    for run_key, values in tqdm(updates.items(), desc="summaries", unit="run"):
        record = by_key[run_key]
        path = wandb_path(record, args.entity, args.project)
        if path is None:  # offline runs know no entity: the one `wandb sync` used
            default_entity = default_entity or wandb_api.default_entity()
            path = wandb_path(record, default_entity, args.project)
        try:
            wandb_api.update_summary(str(path), values)
        except Exception as err:  # a run that was never uploaded, a permission problem
            failed.append(f"{path}: {err}")
    print(f"updated {len(updates) - len(failed)} run summaries")
    for line in failed:
        print(f"  not updated: {line}", file=sys.stderr)
    return 1 if failed else 0
