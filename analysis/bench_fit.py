"""Times a full fit (1000 cell-bootstrap resamples) on the 289-run paper grid.

Run: .venv/bin/python -m qat_sweep.analysis.bench_fit [--bootstrap 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qat_sweep.analysis.design.synth import synthetic_table

from qat_sweep.commands.fit import main as fit_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "fit"
        table = Path(tmp) / "runs.csv"
        synthetic_table(outliers=3, cell_noise=0.005).to_csv(table, index=False)
        for label, extra in (
            ("fit + bootstrap + report, no plots", ["--no-plots"]),
            ("full, with plots", []),
        ):
            start = time.perf_counter()
            code = fit_main(
                [
                    "--table",
                    str(table),
                    "--out",
                    str(out),
                    "--bootstrap",
                    str(args.bootstrap),
                    *extra,
                ]
            )
            print(f"{label}: {time.perf_counter() - start:.1f} s (exit {code})")


if __name__ == "__main__":
    main()
