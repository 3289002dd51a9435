"""The wandb mirror read back from real offline runs: identity, final summary, twin delta.

Three real tiny runs of one sweep, in this order: a W4A4 G=32 run, its BF16 twin, then a
W4A4 per-channel run. The per-channel run finishes after its twin, so it writes final/delta
itself; the G=32 run finished before its twin, so (offline) its delta is left to `sync`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qat_sweep.config import compose_run, run_dir
from qat_sweep.train import train

SWEEP = "wb"
TINY = [
    "model=0.2M",
    "tokens=20480",  # 10 steps of 16 x 128 tokens
    "eval.batches=1",
    "eval.batch_seqs=4",
    "train.threads=1",
    "logger=wandb",
    "logger.wandb.mode=offline",
    f"sweep_name={SWEEP}",
]
W4A4 = ["quant=w4a4", "quant.format=int4"]


def inspect(record: dict) -> dict:
    """`wandb leet inspect --summary --json` of a record's offline run (config + summary)."""
    [wandb_file] = (run_dir_of(record) / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def run_dir_of(record: dict) -> Path:
    return Path(record["config"]["paths"]["runs"]) / record["sweep"] / record["run_key"]


@pytest.fixture(scope="module")
def sweep_runs(
    tmp_path_factory: pytest.TempPathFactory, demo_data: Path
) -> dict[str, dict]:
    """Records of the three runs, trained in the order the module docstring gives."""
    root = tmp_path_factory.mktemp("wandb")
    home = root / "wandb-home"
    env = {f"WANDB_{v}_DIR": str(home) for v in ("CACHE", "CONFIG", "DATA")} | {
        "WANDB_DIR": str(home)
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("WANDB_MODE", raising=False)
        base = [*TINY, f"data.dir={demo_data}", f"paths.runs={root / 'runs'}"]
        order = {
            "g32": [*W4A4, "quant.group_size=32", 'subgrid="main"'],
            "bf16": ["quant=bf16", 'subgrid="bf16_twins"', "holdout=true"],
            "channel": [*W4A4, "quant.group_size=channel", 'subgrid="main"', "holdout=true"],
        }
        records = {name: train(compose_run([*base, *extra])) for name, extra in order.items()}
    assert all(r["status"] == "completed" for r in records.values()), records
    return records


@pytest.mark.slow
def test_offline_run_config_has_the_flat_identity(sweep_runs: dict[str, dict]) -> None:
    bf16, channel = sweep_runs["bf16"], sweep_runs["channel"]
    config = inspect(channel)["config"]
    assert config["n_params"] == channel["n_params"] == 184_320  # non-embedding, the law's N
    assert config["n_params_total"] == channel["n_params_total"] > config["n_params"]
    assert config["tokens"] == 20480 and config["lr"] == channel["lr"] and config["seed"] == 0
    assert (config["scheme"], config["format"]) == ("w4a4", "int4")
    assert (config["group_size"], config["group_elems"]) == ("channel", 64)  # hidden size
    assert config["run_key"] == channel["run_key"] and config["twin_key"] == bf16["run_key"]
    assert (config["sweep"], config["subgrid"], config["holdout"]) == (SWEEP, "main", True)
    assert config["quant"]["group_size"] == "channel"  # the nested config is still there
    g32 = inspect(sweep_runs["g32"])["config"]
    assert (g32["group_size"], g32["group_elems"], g32["holdout"]) == ("32", 32, False)
    twin = inspect(bf16)["config"]
    assert (twin["scheme"], twin["format"], twin["group_size"], twin["group_elems"]) == (
        "bf16",
        "bf16",
        None,
        None,
    )
    assert twin["twin_key"] == twin["run_key"] == bf16["run_key"]
    # the plan's membership lands in the record too, outside the run identity
    assert (channel["subgrid"], channel["holdout"], bf16["subgrid"]) == ("main", True, "bf16_twins")


@pytest.mark.slow
def test_final_summary_and_delta_of_the_second_finisher(sweep_runs: dict[str, dict]) -> None:
    bf16, channel, g32 = sweep_runs["bf16"], sweep_runs["channel"], sweep_runs["g32"]
    summary = inspect(channel)["summary"]
    assert summary["final/loss"] == pytest.approx(channel["loss"], rel=1e-12)
    assert summary["final/val_loss"] == pytest.approx(channel["val_loss"], rel=1e-12)
    assert summary["final/tokens_trained"] == channel["metrics"]["tokens_trained"] == 20480
    assert summary["final/status"] == "completed"
    assert "final/mfu" not in summary  # None on a CPU (no peak FLOPS): wandb drops it
    assert summary["final/bf16_loss"] == pytest.approx(bf16["loss"], rel=1e-12)
    assert summary["final/delta"] == pytest.approx(channel["loss"] - bf16["loss"], abs=1e-12)
    assert summary["loss"] == pytest.approx(channel["loss"], rel=1e-12)  # what fit --wandb reads
    twin = inspect(bf16)["summary"]
    assert twin["final/loss"] == pytest.approx(bf16["loss"]) and "final/delta" not in twin
    # G=32 finished before its twin: offline, nobody could write its delta yet (sync does)
    early = inspect(g32)["summary"]
    assert early["final/loss"] == pytest.approx(g32["loss"]) and "final/delta" not in early
