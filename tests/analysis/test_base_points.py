"""The BF16 fit as the paper's Appendix C: a range of BF16 runs plus external points."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from qat_sweep.analysis import paper
from qat_sweep.analysis.base_points import select_base_runs
from qat_sweep.analysis.design.synth import synthetic_table
from qat_sweep.analysis.law.formulas import bf16_loss

from qat_sweep.commands.fit import main as fit_main

# OLMo-2-7B and -13B as the paper counts them (non-embedding N), on the paper's own law.
EXTRA = [("OLMo-2-7B", 6.5e9, 4.0e12), ("OLMo-2-13B", 12.7e9, 5.0e12)]


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("t") / "runs.csv"
    synthetic_table(seed=5).to_csv(path, index=False)
    return path


def _extra_csv(path: Path, rows=EXTRA) -> Path:
    lines = ["model,n_params,tokens,loss,source"]
    for model, n, d in rows:
        loss = float(bf16_loss(paper.BASE, n, d))
        lines.append(f"{model},{n:g},{d:g},{loss:.6f},{model} checkpoint on our validation data")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fit(table_csv: Path, out: Path, *flags: str) -> dict:
    argv = ["--table", str(table_csv), "--out", str(out), "--bootstrap", "0", "--no-plots"]
    assert fit_main([*argv, *flags]) == 0
    return json.loads((out / "fit.json").read_text())


def test_base_models_and_extra_points_choose_the_base_fit(table_csv, tmp_path) -> None:
    extra = _extra_csv(tmp_path / "olmo.csv")
    res = _fit(table_csv, tmp_path / "c", "--base-models", "145M..595M", "--extra-bf16", str(extra))
    base = res["base"]
    # 145M..595M of the main grid (3 sizes x 4 D, best LR) and the two checkpoints; 74M and the
    # held-out 973M stay out of the base fit.
    assert base["n_runs"] == 3 * 4 + 2
    assert base["models"] == "145M..595M"
    assert base["range"]["n_params"] == [pytest.approx(144.7e6), 12.7e9]
    assert [p["model"] for p in base["extra_bf16"]] == ["OLMo-2-7B", "OLMo-2-13B"]
    assert all(abs(p["log_residual"]) < 0.02 for p in base["extra_bf16"])
    assert "74M" in " ".join(base["notes"]) and "remain the twins" in " ".join(base["notes"])
    assert res["settings"]["base_models"] == "145M..595M"
    # The 74M quantized runs still have their BF16 twins: every W4A4 INT4 run is fitted (the
    # main grid's 80 and the LR sweep's 3).
    assert res["delta"]["w4a4/int4"]["n_runs"] == 83


def test_range_ends_are_model_names_or_counts_and_may_be_open(table_csv) -> None:
    table = pd.read_csv(table_csv)
    bf16 = table[table["scheme"] == "bf16"]
    by_name, _ = select_base_runs(bf16, "145M..595M")
    by_count, _ = select_base_runs(bf16, "140M..600M")
    assert by_name.index.equals(by_count.index)
    above, note = select_base_runs(bf16, "140M..")
    assert set(above["model"]) == {"145M", "297M", "595M", "973M"} and "74M" in note
    assert select_base_runs(bf16, None) == (bf16, None)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--base-models", "145M", "expected LO..HI"),
        ("--base-models", "..", "expected LO..HI"),
        ("--base-models", "145M..big", "'big' is neither a model of the BF16 runs (74M, 145M"),
        ("--base-models", "595M..145M", "the low end (594.5M) is above the high end (144.7M)"),
        ("--base-models", "3B..5B", "no BF16 run has N in this range"),
        ("--extra-bf16", "NOFILE", "file not found"),
        ("--extra-bf16", "model,n_params,tokens,loss\nx,1e9,2e10,2.5\n", "lacks column(s) source"),
        ("--extra-bf16", "model,n_params,tokens,loss,source\n", "no rows"),
        (
            "--extra-bf16",
            "model,n_params,tokens,loss,source\nx,-1,2e10,2.5,s\n",
            "line 2: n_params=-1 must be a number > 0",
        ),
        (
            "--extra-bf16",
            "model,n_params,tokens,loss,source\nx,1e9,2e10,nan,\n",
            "line 2: loss=nan must be a number > 0; line 2: source is empty",
        ),
    ],
)
def test_bad_base_choices_exit_2_naming_the_problem(
    table_csv, tmp_path, capsys, flag, value, message
) -> None:
    if flag == "--extra-bf16" and value != "NOFILE":
        (tmp_path / "x.csv").write_text(value)
    value = str(tmp_path / "x.csv") if flag == "--extra-bf16" else value
    argv = ["--table", str(table_csv), "--out", str(tmp_path / "o"), flag, value]
    assert fit_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "fit.json").exists()
