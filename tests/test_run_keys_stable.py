"""Every run of every shipped sweep keeps its run_key: run directories, records, checkpoints and
wandb ids are found by it, so a change that moves one orphans finished GPU work.

The keys were recorded with `qat-sweep plan sweep=NAME --json` (tests/fixtures/run_keys.json); the
test asks the console script, not a module, so it holds across any reorganisation of the code.
Regenerate the file only for a change that means to rename runs, and say so in the README;
run keys moved once when the OLMo-2 initialisation and norm decay became the defaults.
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


def planned_keys(sweep: str, runs: Path, *overrides: str) -> list[str]:
    script = Path(sys.executable).with_name("qat-sweep")
    out = subprocess.run(
        [str(script), "plan", f"sweep={sweep}", f"paths.runs={runs}", "--json", *overrides],
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


def test_the_earlier_defaults_keep_the_earlier_run_keys(tmp_path: Path) -> None:
    """Runs trained before the OLMo-2 initialisation and norm decay became the defaults keep
    their keys when those two are set back: settings added later are left out of a run's
    identity at the values earlier runs used."""
    earlier = planned_keys("demo", tmp_path, "model.init=scaled", "optim.decay_norms=false")
    assert {
        "0.04M_D1M_bf16_lr3e-3_s0_488fa5",
        "0.04M_D1M_w4a4_int4_g32_lr3e-3_s0_a86433",
        "0.07M_D1M_w4a4_fp4_gch_lr3e-3_s0_e2f587",
    } <= set(earlier)
    assert not set(earlier) & set(json.loads(RECORDED.read_text())["demo"])
