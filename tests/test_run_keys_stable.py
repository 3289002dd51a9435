"""Every run of every shipped sweep keeps its run_key: run directories, records, checkpoints and
wandb ids are found by it, so a change that moves one orphans finished GPU work.

The keys were recorded with `qat-sweep plan sweep=NAME --json` (tests/fixtures/run_keys.json); the
test asks the console script, not a module, so it holds across any reorganisation of the code.
Regenerate the file only for a change that means to rename runs, and say so in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORDED = Path(__file__).parent / "fixtures" / "run_keys.json"
SWEEPS = sorted(json.loads(RECORDED.read_text()))


def planned_keys(sweep: str, runs: Path) -> list[str]:
    script = Path(sys.executable).with_name("qat-sweep")
    out = subprocess.run(
        [str(script), "plan", f"sweep={sweep}", f"paths.runs={runs}", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    ).stdout
    return sorted(row["run_key"] for row in json.loads(out))


def test_every_shipped_sweep_is_recorded() -> None:
    shipped = Path(__file__).parents[1] / "conf" / "sweep"
    assert sorted(p.stem for p in shipped.glob("*.yaml")) == SWEEPS


@pytest.mark.parametrize("sweep", SWEEPS)
def test_run_keys_are_unchanged(sweep: str, tmp_path: Path) -> None:
    assert planned_keys(sweep, tmp_path) == json.loads(RECORDED.read_text())[sweep]
