"""Records and wandb runs -> analysis table, BF16 pairing and quality control."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qat_sweep.analysis.collect import (
    InputError,
    build_table,
    excluded_list,
    load_records,
    pair_deltas,
    read_table,
    record_to_row,
    twin_index,
    wandb_run_to_row,
)
from qat_sweep.analysis.design.synth import synthetic_table, table_to_records

from qat_sweep.record import IDENTITY_FIELDS, load_record
from qat_sweep.train.tracking import wandb_config


def _record(**over):
    base = {
        "schema": 1, "run_key": "r0", "sweep": "s", "status": "completed", "error": None,
        "model": "74M", "n_params": 74.3e6, "n_params_total": 1e8, "hidden_size": 768,
        "tokens": 10e9, "scheme": "bf16", "format": "bf16", "group_size": None, "lr": 1.5e-3,
        "seed": 0, "loss": 3.0, "val_loss": 3.1,
        "metrics": {"quant": {"sites": {"fc2": {"kurtosis": 120.0, "act_nmse": 0.1,
                    "weight_nmse": None, "act_bits": 4, "weight_bits": None}}, "layers": {}},
                    "tokens_per_s": 1000.0},
        "config": {}, "versions": {}, "slurm": None, "wandb": None,
    }  # fmt: skip
    return {**base, **over}


def _write(root: Path, record: dict | str, name: str) -> None:
    (root / name).mkdir(parents=True)
    text = record if isinstance(record, str) else json.dumps(record)
    (root / name / "result.json").write_text(text)


def test_records_to_table_with_metrics_and_corrupt_files(tmp_path):
    _write(tmp_path, _record(), "r0")
    _write(
        tmp_path,
        _record(run_key="r1", scheme="w4a4", format="int4", group_size=128, loss=3.05),
        "r1",
    )
    _write(tmp_path, '{"run_key": "r2", "status": "compl', "r2")
    _write(tmp_path, "[1, 2]", "r3")
    rows, skipped = load_records(tmp_path)
    assert len(rows) == 2 and {s["run_key"] for s in skipped} == {"r2", "r3"}
    table = pair_deltas(build_table(rows))
    quant = table[table["scheme"] == "w4a4"].iloc[0]
    assert quant["delta"] == pytest.approx(0.05) and quant["excluded"] == ""
    assert table["kurtosis_fc2"].iloc[0] == 120.0


def test_fit_skips_the_records_status_reruns_with_the_same_reason(tmp_path):
    """One validity check: a record the launcher would rerun is one the fit leaves out."""
    _write(tmp_path, _record(run_key="old", schema=0), "old")
    _write(tmp_path, {k: v for k, v in _record(run_key="cut").items() if k != "val_loss"}, "cut")
    rows, skipped = load_records(tmp_path)
    assert rows == []
    for entry in skipped:
        problem = load_record(tmp_path / entry["run_key"]).problem
        assert problem and entry["reason"] == f"result.json is {problem}"
    assert "missing key 'val_loss'" in {s["run_key"]: s["reason"] for s in skipped}["cut"]


def test_empty_or_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"no result\.json"):
        load_records(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_records(tmp_path / "nope")


def test_quality_control_reasons():
    rows = [
        _record(run_key="b0"),
        _record(run_key="q_ok", scheme="w4a4", format="int4", group_size=64, loss=3.04),
        _record(run_key="q_dup", scheme="w4a4", format="int4", group_size=64, loss=3.04),
        _record(run_key="q_rep", scheme="w4a4", format="int4", group_size=64, loss=3.05),
        _record(run_key="q_neg", scheme="w4a16", format="int4", group_size=64, loss=2.99),
        _record(
            run_key="q_fail",
            scheme="w16a4",
            format="int4",
            group_size=64,
            status="failed",
            loss=None,
        ),
        _record(run_key="q_div", scheme="w16a4", format="int4", group_size=32, status="diverged"),
        _record(
            run_key="q_notwin", scheme="w4a4", format="int4", group_size=64, tokens=20e9, loss=3.0
        ),
        _record(
            run_key="q_chan", scheme="w4a4", format="int4", group_size="channel", hidden_size=None
        ),
        _record(run_key="q_nan", scheme="w4a4", format="fp4", group_size=32, loss=float("nan")),
    ]
    table = pair_deltas(build_table(rows))
    reasons = dict(zip(table["run_key"], table["excluded"], strict=True))
    # the same run and loss twice keeps the first run_key in sort order; another loss of the
    # same run is a replicate, and enters the fit
    assert reasons["b0"] == "" and reasons["q_dup"] == "" and reasons["q_rep"] == ""
    assert reasons["q_ok"] == "duplicate of q_dup (same run and loss)"
    assert reasons["q_neg"].startswith("non-positive gap")
    assert reasons["q_fail"] == "status failed" and reasons["q_div"] == "status diverged"
    assert reasons["q_notwin"].startswith("no BF16 twin")
    assert "hidden_size" in reasons["q_chan"]
    assert reasons["q_nan"] == "loss missing or not a finite number"
    assert len(excluded_list(table, [])) == 7


def test_channel_group_uses_hidden_size():
    table = build_table(
        [_record(scheme="w4a4", format="int4", group_size="channel", hidden_size=1536)]
    )
    assert table["G"].iloc[0] == 1536 and table["group_size"].iloc[0] == "channel"


def test_wandb_config_and_summary_dicts():
    config = {
        "model": {"value": "145M", "desc": None},
        "n_params": 144.7e6, "hidden_size": 1024, "tokens": 20e9, "scheme": "w4a4",
        "format": "int4", "group_size": "128", "lr": 1e-3, "seed": 0, "run_key": "abc",
    }  # fmt: skip
    summary = {"loss": 3.1, "status": "completed", "metrics.quant.sites.fc2.kurtosis": 90.0,
               "metrics": {"tokens_per_s": 5.0}}  # fmt: skip
    row = wandb_run_to_row(config, summary, "wandb-id")
    assert row["model"] == "145M" and row["run_key"] == "abc" and row["loss"] == 3.1
    assert row["kurtosis_fc2"] == 90.0 and row["tokens_per_s"] == 5.0
    unfinished = wandb_run_to_row({"scheme": "bf16"}, {}, "x")
    assert unfinished["status"] == "failed" and unfinished["run_key"] == "x"


def test_a_qat_sweep_wandb_run_reads_back_as_its_record():
    """What the tracker uploads (config = the resolved config + the flat identity; summary =
    loss and final/*) gives the table row the record gives: `model` is the model group there."""
    record = _record(scheme="w4a4", format="int4", group_size=32, model="0.2M", hidden_size=64)
    record["config"] = {"model": {"name": "0.2M", "n_layers": 3}, "quant": {"scheme": "w4a4"}}
    summary = {"loss": record["loss"], "val_loss": record["val_loss"], "final/status": "completed"}
    from_wandb = build_table([wandb_run_to_row(wandb_config(record), summary, "wandb-id")])
    from_record = build_table([record_to_row(record)])
    columns = [*IDENTITY_FIELDS, "loss", "val_loss", "G", "status", "excluded"]
    assert from_wandb[columns].to_dict("records") == from_record[columns].to_dict("records")


def test_table_roundtrip_and_missing_columns(tmp_path):
    table = synthetic_table(seed=1)
    path = tmp_path / "t.csv"
    table.drop(columns=["loss"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="loss"):
        build_table(read_table(path))
    table.to_csv(path, index=False)
    rebuilt = pair_deltas(build_table(read_table(path)))
    assert (rebuilt["excluded"] == "").all() and rebuilt["delta"].notna().sum() == 268


def test_synthetic_records_load(tmp_path):
    for record in table_to_records(synthetic_table().head(30)):
        _write(tmp_path, record, record["run_key"])
    rows, skipped = load_records(tmp_path)
    assert len(rows) == 30 and not skipped


def test_twins_pair_by_named_twin_key_before_columns():
    """One pairing for fit, simulate and suggest: a record's twin_key wins over the columns."""
    bf16_a = _record(run_key="bf16-a", twin_key="bf16-a", loss=3.0)
    bf16_b = _record(run_key="bf16-b", twin_key="bf16-b", loss=3.2)  # other data, same columns
    named = _record(run_key="q1", scheme="w4a4", format="int4", group_size=32, loss=3.3,
                    twin_key="bf16-b")  # fmt: skip
    unnamed = _record(run_key="q2", scheme="w4a4", format="int4", group_size=64, loss=3.25)
    missing = _record(run_key="q3", scheme="w4a4", format="int4", group_size=128, twin_key="gone")
    table = build_table([bf16_a, bf16_b, named, unnamed, missing])
    twins = twin_index(table)
    assert twins.tolist() == [-1, -1, 1, 1, -1]  # unnamed: the last BF16 row of its columns
    assert twin_index(table, np.array([True, False, True, True, True])).tolist()[2:] == [-1, 0, -1]
    paired = pair_deltas(table).set_index("run_key")
    assert paired.loc["q1", "delta"] == pytest.approx(0.1)
    assert paired.loc["q3", "excluded"] == "no BF16 twin (gone)"


def test_fit_takes_holdout_from_the_records_without_planning(tmp_path, monkeypatch):
    """The sweep file is gone: fit still keeps the records' holdout runs out (no re-plan)."""
    from qat_sweep.commands.fit import main as fit_main
    from qat_sweep.sweep import plan as grid

    def no_plan(*args, **kwargs):
        raise AssertionError("fit planned the sweep")

    monkeypatch.setattr(grid, "plan_sweep", no_plan)
    table = synthetic_table(seed=3)
    for record in table_to_records(table, sweep="gone"):
        _write(tmp_path / "gone", record, record["run_key"])
    out = tmp_path / "report"
    argv = ["sweep=gone", f"paths.runs={tmp_path}", "--out", str(out), "--bootstrap", "0"]
    assert fit_main([*argv, "--no-plots"]) == 0
    res = json.loads((out / "fit.json").read_text())
    assert res["n_runs"]["holdout"] == int(table["holdout"].sum()) > 0


def test_a_pair_computed_otherwise_is_left_out_with_the_difference(tmp_path):
    """Twins must share their execution: a QAT run on 2 DDP ranks against a BF16 twin on one
    process carries a difference of numerics, not only quantization."""
    one = {"device_type": "cpu", "world_size": 1, "parallelism": "single", "micro_batch_seqs": 16,
           "compute_dtype": "fp32", "gather_dtype": None, "compiled": False, "autocast": False}  # fmt: skip
    two = one | {"world_size": 2, "parallelism": "ddp", "micro_batch_seqs": 8}
    quant = {"scheme": "w4a4", "format": "int4", "twin_key": "bf16"}
    records = [
        _record(run_key="bf16", twin_key="bf16", loss=3.0, execution=one),
        _record(run_key="alike", group_size=32, loss=3.2, execution=one, **quant),
        _record(run_key="other", group_size=64, loss=3.1, execution=two, **quant),
        _record(run_key="older", group_size=128, loss=3.1, **quant),  # no execution: compared
    ]
    paired = pair_deltas(build_table(map(record_to_row, records))).set_index("run_key")
    assert paired.loc["alike", "excluded"] == paired.loc["older", "excluded"] == ""
    reason = paired.loc["other", "excluded"]
    assert reason == (
        "executed otherwise than its BF16 twin: world_size 2 vs 1; parallelism ddp vs single; "
        "micro_batch_seqs 8 vs 16"
    )
    assert paired.loc["other", "delta"] == pytest.approx(0.1)  # kept for the report
    path = tmp_path / "runs.csv"  # the same verdict from the table fit writes and reads back
    paired.reset_index().to_csv(path, index=False)
    again = pair_deltas(build_table(read_table(path))).set_index("run_key")
    assert again["excluded"].to_dict() == paired["excluded"].to_dict()


def test_channel_g_is_the_hidden_size_or_the_layers_reduction_dimensions(tmp_path, capsys):
    """fit --channel-g reduction: FC2 reduces over the FFN size, the other linears over the
    hidden size; the run's G is their weight-weighted geometric mean."""
    from qat_sweep.analysis.law.formulas import reduction_group

    from qat_sweep.commands.fit import main as fit_main

    model = {"hidden_size": 768, "ffn_size": 2048, "n_heads": 12, "n_kv_heads": 4}
    quant = {"scheme": "w4a4", "format": "int4", "twin_key": "bf16", "config": {"model": model}}
    records = [
        _record(run_key="bf16", twin_key="bf16"),
        _record(run_key="ch", group_size="channel", loss=3.2, **quant),
        _record(run_key="g32", group_size=32, loss=3.3, **quant),
        _record(run_key="bare", group_size="channel", loss=3.2, scheme="w4a4", format="int4"),
    ]
    rows = [record_to_row(r) for r in records]
    hidden = build_table(rows).set_index("run_key")
    reduction = build_table(rows, "reduction").set_index("run_key")
    assert hidden.loc["ch", "G"] == 768 and reduction.loc["g32", "G"] == 32
    # weights: qkv 768 x (768 + 2 x 256), o 768^2, FC1 768 x 4096 over 768; FC2 2048 x 768
    over_d, over_f = 768 * 1280 + 768**2 + 768 * 4096, 2048 * 768
    expected = np.exp((over_d * np.log(768) + over_f * np.log(2048)) / (over_d + over_f))
    assert reduction.loc["ch", "G"] == pytest.approx(expected)
    assert 768 < reduction_group(768, 2048, 256) < 2048
    assert reduction.loc["bare", "excluded"] == (
        "per-channel group without ffn_size and kv_dim (--channel-g reduction)"
    )
    assert (
        fit_main(["--runs", str(tmp_path), "--out", str(tmp_path / "o"), "--channel-g", "ffn"]) == 2
    )
    assert "--channel-g ffn: allowed: hidden, reduction" in capsys.readouterr().err
