"""`qat-sweep fit`: records (or a table, or wandb) in, fitted laws, report and plots out.

Arguments mix Hydra-style `key=value` overrides (sweep=, paths.runs=, model=, tokens=...) with
`--flags`, matching the rest of the qat-sweep command line. Bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from qat_sweep.analysis.collect import (
    InputError,
    build_table,
    fetch_wandb,
    load_records,
    pair_deltas,
    read_table,
)
from qat_sweep.common import bounded_arg, command_hint, creatable_dir_problem, split_overrides
from qat_sweep.record import RUNS_ROOT, sweep_dir

FIT_OVERRIDES = {"sweep", "paths.runs"}


def _fit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qat-sweep fit",
        description="Fit the unified QAT scaling law. Source: sweep=NAME [paths.runs=ROOT] | --runs DIR | --table CSV | --wandb E/P.",
    )
    p.add_argument("--runs", type=Path, help="directory holding <run_key>/result.json records")
    p.add_argument("--table", type=Path, help="analysis table CSV (e.g. a previous runs.csv)")
    p.add_argument("--out", type=Path, help="output directory (default reports/<sweep> for sweep=)")
    p.add_argument(
        "--bootstrap",
        type=bounded_arg(0, whole=True),
        default=1000,
        help="resamples of (N, D) cells (0: none)",
    )
    p.add_argument("--seed", type=bounded_arg(0, whole=True), default=0)
    p.add_argument("--free-beta", action="store_true", help="fit beta separately from alpha")
    p.add_argument("--joint", action="store_true", help="also fit all runs jointly")
    p.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT",
        help="read runs from wandb if no other source; log results there",
    )
    p.add_argument(
        "--holdout",
        metavar="QUERY",
        help="pandas query marking held-out runs, e.g. 'n_params > 9e8'",
    )
    p.add_argument(
        "--huber-base",
        type=bounded_arg(0, low_open=True),
        default=1e-3,
        help="Huber threshold on log-loss residuals",
    )
    p.add_argument(
        "--all-lr",
        action="store_true",
        help="use BF16 runs at every LR in the base fit (default: best LR)",
    )
    p.add_argument(
        "--base-models",
        metavar="LO..HI",
        help="BF16 runs whose N lies in this range enter the base (Chinchilla) fit, e.g. "
        "145M..2.8B as the paper's Appendix C; model names or counts, either end open "
        "(default: all); runs outside stay twins of their quantized runs",
    )
    p.add_argument(
        "--extra-bf16",
        type=Path,
        metavar="FILE.csv",
        help="external BF16 points for the base fit, columns model, n_params (non-embedding), "
        "tokens, loss, source (e.g. OLMo-2-7B evaluated on the same data); shown apart",
    )
    p.add_argument(
        "--channel-g",
        default="hidden",
        metavar="hidden|reduction",
        help="the G inside log2 G of a per-channel run: the hidden size (default), or each "
        "layer's reduction dimension (FFN size for FC2), weighted by the layers' weights",
    )
    p.add_argument("--no-plots", action="store_true", help="skip figures (report without plots)")
    p.add_argument(
        "--law",
        metavar="NAME",
        help="use this delta law wherever it is fitted instead of the one selected by held-out "
        "error (every law is still fitted and compared); see docs/laws.md",
    )
    p.add_argument(
        "--sealed",
        type=Path,
        metavar="DIR",
        help="sealed predictions (`predict --seal`) to check against the runs (default: "
        "<sweep>/predictions/ for sweep= and --runs)",
    )
    return p


def _load_source(
    args: argparse.Namespace, overrides: dict[str, str]
) -> tuple[Any, list[dict[str, str]], str, Path]:
    sources = [
        s for s in ("sweep" in overrides, args.runs is not None, args.table is not None) if s
    ]
    if len(sources) > 1:
        raise InputError("give exactly one of sweep=NAME, --runs DIR, --table FILE.csv")
    if "sweep" in overrides:
        root = sweep_dir(overrides.get("paths.runs", RUNS_ROOT), overrides["sweep"])
        rows, skipped = load_records(root)  # each record says whether plan held it out
        return (
            rows,
            skipped,
            f"sweep {overrides['sweep']} ({root})",
            args.out or Path("reports") / overrides["sweep"],
        )
    if args.out is None:
        raise InputError("--out DIR is required unless sweep=NAME is given")
    if args.runs is not None:
        rows, skipped = load_records(args.runs)
        return rows, skipped, f"records under {args.runs}", args.out
    if args.table is not None:
        return read_table(args.table), [], f"table {args.table}", args.out
    if args.wandb:
        return fetch_wandb(args.wandb), [], f"wandb {args.wandb}", args.out
    raise InputError(
        "no input: give sweep=NAME, --runs DIR, --table FILE.csv or --wandb ENTITY/PROJECT"
    )


def _runs_dir(args: argparse.Namespace, overrides: dict[str, str]) -> Path | None:
    """The run directories' folder (sweep= or --runs); None for a table or wandb."""
    if "sweep" in overrides:
        return sweep_dir(overrides.get("paths.runs", RUNS_ROOT), overrides["sweep"])
    return args.runs


def _sealed_dir(args: argparse.Namespace, overrides: dict[str, str]) -> Path | None:
    """Where sealed predictions live: --sealed DIR, else <sweep>/predictions or
    <--runs DIR>/predictions (a folder that does not exist holds none)."""
    from qat_sweep.analysis.seal import PREDICTIONS_DIR

    if args.sealed is not None:
        if not args.sealed.is_dir():
            raise InputError(f"--sealed {args.sealed}: not a directory")
        return args.sealed
    runs = _runs_dir(args, overrides)
    return None if runs is None else runs / PREDICTIONS_DIR


def main(argv: list[str]) -> int:
    """Run `qat-sweep fit`; returns the process exit code."""
    from qat_sweep.analysis import decide
    from qat_sweep.analysis.pipeline import Settings, bootstrap_arrays, run_fit, write_outputs
    from qat_sweep.analysis.predict import SavedFit
    from qat_sweep.analysis.report import html as report
    from qat_sweep.analysis.report import plots
    from qat_sweep.analysis.seal import check_sealed

    # lmfit's plain-least-squares stderr takes sqrt of a negative covariance on flat fits; our
    # intervals come from the bootstrap, so those warnings only bury the summary.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="lmfit")
    try:
        parser = _fit_parser()
        overrides, rest = split_overrides(argv, FIT_OVERRIDES, parser)
        args = parser.parse_args(rest)
        from qat_sweep.analysis.law.formulas import CHANNEL_G, LAWS

        if args.channel_g not in CHANNEL_G:
            raise InputError(f"--channel-g {args.channel_g}: allowed: {', '.join(CHANNEL_G)}")

        if args.law is not None and args.law not in LAWS:
            raise InputError(f"--law {args.law}: unknown law; laws: {', '.join(LAWS)}")
        from qat_sweep.analysis.base_points import read_extra_bf16

        extra = None if args.extra_bf16 is None else read_extra_bf16(args.extra_bf16)
        rows, skipped, source, out = _load_source(args, overrides)
        sealed = _sealed_dir(args, overrides)
        if (cannot := creatable_dir_problem("--out", out, "the fit's outputs")) is not None:
            raise InputError(cannot)  # before minutes of bootstrap, not after
        table = pair_deltas(build_table(rows, args.channel_g))
        settings = Settings(
            bootstrap=args.bootstrap, seed=args.seed, tied=not args.free_beta, joint=args.joint,
            base_f_scale=args.huber_base, holdout=args.holdout,
            base_lr="all" if args.all_lr else "best", law=args.law, source=source,
            base_models=args.base_models, channel_g=args.channel_g,
            extra_bf16=None if args.extra_bf16 is None else str(args.extra_bf16),
        )  # fmt: skip
        outcome = run_fit(table, skipped, settings, extra)
        outcome.result["preregistered"] = check_sealed(sealed, outcome.table)
    except InputError as err:
        print(f"qat-sweep fit: error: {err}", file=sys.stderr)
        return 2
    outcome.result["decisions"] = decide.report_decisions(outcome)  # the report's Decisions section
    fit_path = write_outputs(outcome, out)
    saved = SavedFit(outcome.result, bootstrap_arrays(outcome))
    runs_dir = _runs_dir(args, overrides)
    figures = {} if args.no_plots else plots.make_all(outcome, saved, out / "plots", runs_dir)
    report.write_markdown(outcome.result, figures, out / "report.md", outcome.table)
    report.write_html(outcome.result, figures, out / "report.html", outcome.table)
    if args.wandb:
        from qat_sweep.analysis.wandb_log import log_fit

        sync = [f"{key}={value}" for key, value in overrides.items()]  # sweep=, paths.runs=
        sync_hint = command_hint("sync", sync, "--fit", str(out))
        log_fit(args.wandb, outcome.result, outcome.table, figures, out, sync_hint=sync_hint)
    print(summary_text(outcome.result, out, fit_path))
    return 0


def summary_text(res: dict[str, Any], out: Path, fit_path: Path) -> str:
    """What the fit command prints: where the report is, parameters with 95% intervals."""

    def fmt(fit: dict[str, Any]) -> str:
        parts = []
        flags = fit.get("interval_flags") or {}
        for name, value in fit["params"].items():
            if value is None:
                parts.append(f"{name}=not identifiable")
                continue
            interval = fit["ci95"].get(name)
            flag = flags.get(name, "")
            parts.append(
                f"{name}={value:.4g}"
                + (f" [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "")
                + (" (not identifiable)" if flag.startswith("not identifiable") else "")
            )
        return ", ".join(parts)

    lines = [
        f"report: {(out / 'report.html').resolve()}",
        f"fit:    {fit_path.resolve()}",
        f"runs:   {res['n_runs']['usable']} usable, {len(res['excluded'])} excluded",
        f"bf16   {fmt(res['base'])}",
    ]
    lines += [f"{key:<17}[{f.get('law', 'paper')}] {fmt(f)}" for key, f in res["delta"].items()]
    for key, item in (res.get("start_fractions") or {}).items():
        starts = ", ".join(f"{f:g}" for f in item["start_fractions"])
        lines.append(
            f"{key} across QAT start fractions {starts}: {item['law']} "
            f"({item['selection'].get('why', '')})"
        )
    for item in res.get("preregistered") or []:
        lines.append(f"sealed: {item['file']}: {item['status']}")
    return "\n".join(lines)
