"""`qat-sweep demo`: the whole loop on a laptop — corpus, tiny sweep, fit, report.

It goes through exactly the path users take on a cluster (`plan` → `launch launcher=local` →
`fit`), so a green demo is evidence for the real thing. Running it again skips completed runs
and only refits.
"""

from __future__ import annotations

import time
from pathlib import Path

from qat_sweep.commands import fit, launch, plan, status
from qat_sweep.common import command_hint, split_overrides
from qat_sweep.data.prepare.corpus import build_demo_corpus
from qat_sweep.record import RUNS_ROOT

USAGE = """usage: qat-sweep demo [sweep=demo] [launcher=local] [--bootstrap N] [overrides...]

Builds the offline demo corpus, runs every missing run of the sweep on this machine, fits the
scaling law and writes the report to <paths.reports>/<sweep>/report.html.
"""


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    options, rest = split_overrides(argv)
    sweep, launcher = options.pop("sweep", "demo"), options.pop("launcher", "local")
    reports_root = options.pop("paths.reports", "reports")
    data_root, runs_root = options.get("paths.data", "data"), options.get("paths.runs", RUNS_ROOT)
    flags = [a for a in rest if a.startswith("--bootstrap=")]
    bootstrap = flags[-1].partition("=")[2] if flags else "1000"
    overrides = [f"{k}={v}" for k, v in options.items()] + [a for a in rest if a not in flags]
    started = time.monotonic()

    _step("1/4 demo corpus (Python stdlib sources, local byte-level BPE: no download)")
    build_demo_corpus(Path(data_root) / "demo")

    _step(f"2/4 plan sweep={sweep}")
    code = plan.main([f"sweep={sweep}", *overrides])
    if code:
        return code

    _step(f"3/4 launch sweep={sweep} launcher={launcher} (completed runs are skipped)")
    launch_code = launch.main([f"sweep={sweep}", f"launcher={launcher}", *overrides])
    if launch_code:
        status_argv = [f"sweep={sweep}", *overrides]
        print(
            f"some runs failed; fitting the completed ones (see `{command_hint('status', status_argv)}`)"
        )
        status.main(status_argv)

    _step("4/4 fit the unified QAT scaling law and write the report")
    out = Path(reports_root) / sweep
    fit_code = fit.main(
        [f"sweep={sweep}", f"paths.runs={runs_root}", "--out", str(out), "--bootstrap", bootstrap]
    )
    if fit_code:
        return fit_code
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo done in {minutes:.1f} min. Open the report: {(out / 'report.html').resolve()}")
    print(f"(also {out / 'report.md'}, {out / 'fit.json'}, {out / 'plots'})")
    return launch_code
