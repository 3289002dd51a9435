"""A saved fit for the commands that read one (predict, decide, suggest), built once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def saved_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qat_sweep.analysis.design.synth import synthetic_table, table_to_records

    from qat_sweep.commands.fit import main as fit_main

    root = tmp_path_factory.mktemp("fit-runs")
    for record in table_to_records(synthetic_table(seed=3), sweep="paper"):
        (root / "paper" / record["run_key"]).mkdir(parents=True)
        (root / "paper" / record["run_key"] / "result.json").write_text(json.dumps(record))
    out = root / "fit"
    argv = ["sweep=paper", f"paths.runs={root}", "--out", str(out), "--bootstrap", "20"]
    assert fit_main([*argv, "--no-plots"]) == 0
    return out
