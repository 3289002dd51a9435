"""The analysis of sweep=formats: a block format's G is its block (gamma_G cannot be separated
within it, and fit and design say so), decide counts each encoding's own scale bits, and the
report compares every format present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qat_sweep.analysis.decide import Question, best_format, decisions
from qat_sweep.analysis.design import simulate as sim
from qat_sweep.analysis.law import identify
from qat_sweep.analysis.predict import SavedFit

from qat_sweep.cli import main as cli_main
from qat_sweep.commands.fit import main as fit_main
from qat_sweep.model.precision import bits_per_weight

COLUMNS = ["run_key", "model", "n_params", "tokens", "scheme", "format", "group_size", "lr",
           "seed", "hidden_size", "holdout"]  # fmt: skip


@pytest.fixture(scope="module")
def formats_runs() -> pd.DataFrame:
    return sim.grid_runs("formats")


@pytest.fixture(scope="module")
def formats_fit(formats_runs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fit` on the formats sweep with losses from the covering paper prior (noise 0.002)."""
    keys = tuple(formats_runs.loc[formats_runs["scheme"] != "bf16", "fit_key"].unique())
    prior = sim.covering(sim.paper_prior(), keys)
    rng = np.random.default_rng(0)
    loss = sim.true_losses(prior, formats_runs) + rng.normal(0, 0.002, len(formats_runs))
    out = tmp_path_factory.mktemp("formatsfit")
    formats_runs[COLUMNS].assign(loss=loss).to_csv(out / "table.csv", index=False)
    argv = ["--table", str(out / "table.csv"), "--out", str(out), "--bootstrap", "30"]
    assert fit_main([*argv, "--no-plots"]) == 0
    return out


def test_the_grid_holds_every_format_with_and_without_rotation(formats_runs) -> None:
    settings = set(formats_runs.loc[formats_runs["scheme"] != "bf16", "fit_key"])
    formats = ("int4", "fp4", "mxfp4", "mxint4", "nvfp4", "nvint4")
    assert settings == {f"w4a4/{f}{r}" for f in formats for r in ("", "-had")}
    blocks = formats_runs[formats_runs["format"].str.startswith(("mx", "nv"))]
    assert set(zip(blocks["format"].str[:2], blocks["group_size"], strict=True)) == {
        ("mx", 32),
        ("nv", 16),
    }


def test_fit_says_a_block_formats_g_cannot_be_separated(formats_fit: Path) -> None:
    result = json.loads((formats_fit / "fit.json").read_text())
    for key in ("w4a4/mxfp4", "w4a4/nvint4-had"):
        fit = result["delta"][key]
        gamma_g = fit["identifiability"]["exponents"]["gamma_G"]
        assert "gamma_G" in fit["not_identifiable"] and not gamma_g["separable"]
        assert "part of the format" in gamma_g["why"]
        assert gamma_g["runs_to_separate"] == identify.FIXED_BLOCK_REMEDY
        paper = fit["laws"]["paper"]["params"]  # the selected law may be another
        assert paper["gamma_N"] is not None and paper["gamma_D"] is not None
    int4 = result["delta"]["w4a4/int4"]["identifiability"]["exponents"]["gamma_G"]
    assert "part of the format" not in int4.get("why", "")  # two Gs: a grid question


def test_report_compares_every_format_present(formats_fit: Path) -> None:
    result = json.loads((formats_fit / "fit.json").read_text())
    compared = result["analyses"]["formats"]["settings"]
    assert set(compared) == set(result["delta"])
    assert compared["w4a4/mxfp4"]["mean_delta_per_G"].keys() == {"32"}
    assert compared["w4a4/nvfp4-had"]["minus_int4_per_G"].keys() == {"16"}
    assert compared["w4a4/int4"]["minus_int4_per_G"] is None
    assert "Formats compared" in (formats_fit / "report.md").read_text()


def test_decide_counts_each_encodings_scale_bits(formats_fit: Path) -> None:
    saved = SavedFit.load(formats_fit)
    question = Question(594.5e6, 100e9, 1536, "w4a4/mxfp4", bits=4.3)
    res = best_format(saved, question)
    bits = {(c["setting"], c["group_size"]): c["bits_per_weight"] for c in res["candidates"]}
    assert bits[("w4a4/mxfp4", "32")] == bits[("w4a4/mxint4-had", "32")] == 4.25
    assert bits[("w4a4/int4", "64")] == 4.25 and ("w4a4/int4", "32") not in bits  # 4.5 > 4.3
    assert not any(key.startswith("w4a4/nv") for key, _ in bits)  # 4 + 8/16 = 4.5
    assert res["delta"] == min(c["delta"] for c in res["candidates"])
    assert 0 <= res["share_of_draws"] <= 1
    wide = best_format(saved, Question(594.5e6, 100e9, 1536, "w4a4/int4", bits=4.5))
    assert {c["setting"] for c in wide["candidates"]} >= {"w4a4/nvfp4", "w4a4/nvint4-had"}
    assert bits_per_weight("nvfp4", 16) == 4.5 and bits_per_weight("int4", 32) == 4.5
    both = decisions(saved, Question(594.5e6, 100e9, 1536, "w4a4/nvfp4", bits=4.5))
    assert both["best_group_size"]["group_size"] == "16"  # its block, whatever G was asked
    assert both["tokens_to_tolerance"]["group_size"] == "16"


def test_decide_and_design_cli_on_block_formats(formats_fit: Path, capsys) -> None:
    argv = ["decide", "--fit", str(formats_fit), "model=595M", "tokens=100B", "format=mxfp4"]
    assert cli_main([*argv, "--bits", "4.3"]) == 0
    out = capsys.readouterr().out
    assert "best fitted format under 4.3 bits/weight" in out and "w4a4/mxfp4 G=32" in out
    assert cli_main([*argv, "--bits", "4.2"]) == 2
    assert "mxfp4 stores 4.250 bits per weight (4 + 8 / 32)" in capsys.readouterr().err
    design = ["design", "sweep=formats", "--sims", "10", "--noise", "0.01", "--json"]
    target = "model=595M tokens=100B scheme=w4a4 format=nvfp4-had"
    assert cli_main([*design, "--target", target]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "part of the format" in res["fixed_block"]["w4a4/mxint4"]
    assert any("w4a4/fp4's law stands in" in note for note in res["prior"]["notes"])
    (item,) = res["targets"]
    assert item["group_size"] == 16 and not any("gamma_G" in w for w in item["warnings"])
    assert cli_main([*design[:-1], "--target", f"{target} group_size=32"]) == 2
    assert "its block of 16 is part of the format" in capsys.readouterr().err


def test_predict_at_a_block_format_needs_no_group_size(formats_fit: Path, capsys) -> None:
    argv = ["predict", "--fit", str(formats_fit), "model=595M", "tokens=100B", "scheme=w4a4"]
    assert cli_main([*argv, "format=mxfp4-had", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["delta"]["value"] > 0 and not any("gamma_G" in w for w in pred["warnings"])
    assert cli_main([*argv, "format=nvfp4", "group_size=32"]) == 2
    assert "its block of 16 is part of the format" in capsys.readouterr().err
