"""`qat-sweep demo`: the whole loop on a laptop — corpus, tiny sweep, fit, report.

It goes through exactly the path users take on a cluster (`plan` → `launch launcher=local` →
`fit`), so a green demo is evidence for the real thing. Running it again skips completed runs
and only refits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from qat_sweep.analysis.cli import fit_main
from qat_sweep.corpus import build_demo_corpus
from qat_sweep.dispatch import launch_main, status_main
from qat_sweep.grid import plan_main

USAGE = """usage: qat-sweep demo [sweep=demo] [launcher=local] [--bootstrap N] [overrides...]

Builds the offline demo corpus, runs every missing run of the sweep on this machine, fits the
scaling law and writes the report to <paths.reports>/<sweep>/report.html.
"""


def _option(argv: list[str], key: str, default: str) -> tuple[str, list[str]]:
    rest, value = [], default
    for arg in argv:
        if arg.startswith(f"{key}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return value, rest


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    sweep, argv = _option(argv, "sweep", "demo")
    launcher, argv = _option(argv, "launcher", "local")
    bootstrap, argv = _option(argv, "--bootstrap", "1000")
    data_root, _ = _option(argv, "paths.data", "data")
    runs_root, _ = _option(argv, "paths.runs", "runs")
    reports_root, _ = _option(argv, "paths.reports", "reports")
    overrides = [a for a in argv if not a.startswith("paths.reports=")]
    started = time.monotonic()

    _step("1/4 demo corpus (Python stdlib sources, local byte-level BPE: no download)")
    build_demo_corpus(Path(data_root) / "demo")

    _step(f"2/4 plan sweep={sweep}")
    code = plan_main([f"sweep={sweep}", *overrides])
    if code:
        return code

    _step(f"3/4 launch sweep={sweep} launcher={launcher} (completed runs are skipped)")
    launch_code = launch_main([f"sweep={sweep}", f"launcher={launcher}", *overrides])
    if launch_code:
        print("some runs failed; fitting the completed ones (see `qat-sweep status`)")
        status_main([f"sweep={sweep}", *overrides])

    _step("4/4 fit the unified QAT scaling law and write the report")
    out = Path(reports_root) / sweep
    fit_code = fit_main(
        [f"sweep={sweep}", f"paths.runs={runs_root}", "--out", str(out), "--bootstrap", bootstrap]
    )
    if fit_code:
        return fit_code
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo done in {minutes:.1f} min. Open the report: {(out / 'report.html').resolve()}")
    print(f"(also {out / 'report.md'}, {out / 'fit.json'}, {out / 'plots'})")
    return launch_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
