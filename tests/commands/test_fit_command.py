"""`fit` and `predict` entry points: outputs, schema, idempotence, bad input, predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from qat_sweep.analysis.design.synth import synthetic_table, table_to_records

from qat_sweep.commands.fit import main as fit_main
from qat_sweep.commands.predict import main as predict_main
from qat_sweep.common import parse_count


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    table = synthetic_table(outliers=2, cell_noise=0.003, seed=7)
    for record in table_to_records(table, sweep="paper"):
        (root / "paper" / record["run_key"]).mkdir(parents=True)
        (root / "paper" / record["run_key"] / "result.json").write_text(json.dumps(record))
    bad = root / "paper" / "broken"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    out = root / "report"
    code = fit_main(
        ["sweep=paper", f"paths.runs={root}", "--out", str(out), "--bootstrap", "100", "--no-plots"]
    )
    assert code == 0
    return out


def test_fit_json_schema(fitted):
    res = json.loads((fitted / "fit.json").read_text())
    assert set(res["base"]["params"]) == {"A", "alpha", "B", "beta", "E"}
    assert all(len(v) == 2 for v in res["base"]["ci95"].values())
    assert res["base"]["n_runs"] > 0
    key = "w4a4/int4"
    assert set(res["delta"][key]["params"]) == {"k", "gamma_N", "gamma_D", "gamma_G"}
    assert res["delta"][key]["rel_error"] < 0.2 and res["delta"][key]["n_runs"] > 50
    assert {"validation", "excluded", "settings"} <= set(res)
    assert {"run_key": "broken", "reason": res["excluded"][0]["reason"]} in res["excluded"]
    assert res["delta"]["w4a4/fp4"]["params"]["gamma_N"] is None  # one cell only
    assert "not_identifiable" in res["delta"]["w4a4/fp4"]
    for name in ("report.html", "report.md", "runs.csv", "bootstrap.npz"):
        assert (fitted / name).is_file()
    assert res["validation"]["holdout"]["delta"]["w4a4/int4"]["rel_error"] < 0.2


def test_fit_is_idempotent_from_its_own_table(fitted, tmp_path):
    args = ["--bootstrap", "100", "--no-plots"]
    assert fit_main(["--table", str(fitted / "runs.csv"), "--out", str(tmp_path / "a"), *args]) == 0
    assert fit_main(["--table", str(fitted / "runs.csv"), "--out", str(tmp_path / "a"), *args]) == 0
    first = json.loads((tmp_path / "a" / "fit.json").read_text())
    original = json.loads((fitted / "fit.json").read_text())
    assert first["delta"]["w4a4/int4"]["params"] == original["delta"]["w4a4/int4"]["params"]
    assert first["delta"]["w4a4/int4"]["ci95"] == original["delta"]["w4a4/int4"]["ci95"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "X"], "no input"),
        (["--runs", "EMPTY", "--out", "X"], "no result.json"),
        (["--table", "MISSINGCOL", "--out", "X"], "required columns"),
        (["--table", "NOFILE", "--out", "X"], "not found"),
        (["foo=bar", "--out", "X"], "unknown key 'foo' in 'foo=bar'"),
        (["--table", "MISSINGCOL"], "--out"),
    ],
)
def test_bad_input_exits_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    synthetic_table().drop(columns=["tokens"]).to_csv(tmp_path / "nocol.csv", index=False)
    names = {
        "X": tmp_path / "o",
        "EMPTY": tmp_path / "empty",
        "MISSINGCOL": tmp_path / "nocol.csv",
        "NOFILE": tmp_path / "x.csv",
    }
    argv = [str(names.get(a, a)) for a in argv]
    assert fit_main(argv) == 2
    assert message in capsys.readouterr().err


def test_all_runs_failed_is_reported(tmp_path, capsys):
    table = synthetic_table().head(10).assign(status="failed")
    table.to_csv(tmp_path / "t.csv", index=False)
    assert fit_main(["--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "status failed" in capsys.readouterr().err


def test_single_n_grid_reports_not_identifiable(tmp_path, capsys):
    table = synthetic_table()
    table[table["model"] == "145M"].to_csv(tmp_path / "t.csv", index=False)
    assert (
        fit_main(
            [
                "--table",
                str(tmp_path / "t.csv"),
                "--out",
                str(tmp_path / "o"),
                "--bootstrap",
                "50",
                "--no-plots",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert (
        res["base"]["params"]["A"] is None
        and res["delta"]["w4a4/int4"]["params"]["gamma_N"] is None
    )
    assert "not identifiable" in capsys.readouterr().out
    assert "not identifiable" in (tmp_path / "o" / "report.md").read_text()


def test_predict_cli(fitted, capsys):
    argv = [
        "--fit",
        str(fitted),
        "n_params=7e9",
        "hidden_size=4096",
        "tokens=140B",
        "scheme=w4a4",
        "format=int4",
        "group_size=128",
    ]
    assert predict_main(argv) == 0
    text = capsys.readouterr().out
    for label in ("BF16 loss", "delta", "QAT loss", "eff. multiplier", "95% CI", "95% PI"):
        assert label in text
    assert predict_main([*argv[:-1], "group_size=channel", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    lo, hi = pred["delta"]["ci95"]
    assert lo <= pred["delta"]["value"] <= hi and 0 < pred["eff_multiplier"]["value"] < 1
    assert (
        predict_main(
            ["--fit", str(fitted), "n_params=1e9", "tokens=20B", "scheme=w4a4", "format=int4"]
        )
        == 2
    )
    assert (
        predict_main(
            [
                "--fit",
                str(fitted),
                "n_params=1e9",
                "tokens=20B",
                "scheme=w9a9",
                "format=int4",
                "group_size=32",
            ]
        )
        == 2
    )
    assert "no delta fit" in capsys.readouterr().err
    # Far outside the fitted grid the number comes with a warning that says by how much.
    assert predict_main(["--fit", str(fitted), "n_params=7e10", *argv[3:]]) == 0
    assert "x the largest fitted" in capsys.readouterr().out
    assert predict_main(["--fit", str(fitted), "n_params=1e9", *argv[3:]]) == 0
    assert "extrapolation" not in capsys.readouterr().out


def test_parse_count():
    assert parse_count("20e9") == 20e9 and parse_count("20B") == 20e9 and parse_count("100M") == 1e8
    assert parse_count("1.5T") == 1.5e12


@pytest.mark.slow
def test_python_m_entry_point_with_plots(fitted, tmp_path):
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        "-m",
        "qat_sweep.cli",
        "fit",
        "--table",
        str(fitted / "runs.csv"),
        "--out",
        str(out),
        "--bootstrap",
        "20",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pngs = list((out / "plots").glob("*.png"))
    assert "report:" in proc.stdout and len(pngs) >= 8
    assert all(p.with_suffix(".svg").is_file() for p in pngs)  # vector beside every PNG


BAD_ROWS = {
    "loss": (-1.0, "loss = -1: must be > 0"),
    "tokens": (0.0, "tokens = 0: must be > 0"),
    "n_params": (float("nan"), "n_params missing or not a finite number"),
    "group_size": ("abc", "group_size 'abc': allowed an integer >= 2 or channel"),
}


def test_bad_rows_are_excluded_by_name_before_fitting(tmp_path):
    table = synthetic_table(seed=2)
    table["group_size"] = table["group_size"].astype(object)
    quant = table.index[(table["scheme"] == "w4a4") & ~table["holdout"]]
    bad = dict(zip(sorted(BAD_ROWS), quant, strict=False))
    for column, row in bad.items():
        table.loc[row, column] = BAD_ROWS[column][0]
    table.loc[table.index[table["scheme"] == "w16a4"][0], "group_size"] = 1
    table.to_csv(tmp_path / "t.csv", index=False)
    argv = ["--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"), "--bootstrap", "0"]
    assert fit_main([*argv, "--no-plots"]) == 0
    excluded = {e["run_key"]: e["reason"] for e in json.loads((tmp_path / "o" / "fit.json").read_text())["excluded"]}  # fmt: skip
    for column, row in bad.items():
        assert excluded[table.loc[row, "run_key"]] == BAD_ROWS[column][1]
    assert "group size 1: must be >= 2 (log2 G > 0)" in excluded.values()


def test_a_table_with_nothing_usable_exits_2_without_traceback(tmp_path):
    table = synthetic_table().head(8).assign(tokens=-5.0)
    table.to_csv(tmp_path / "t.csv", index=False)
    cmd = [sys.executable, "-m", "qat_sweep.cli", "fit", "--table", str(tmp_path / "t.csv"),
           "--out", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no usable runs" in proc.stderr and "tokens = -5: must be > 0" in proc.stderr


@pytest.mark.parametrize("query", ["n_params >= 9e8", "model == '973M' and scheme != 'x'"])
def test_holdout_takes_any_pandas_query(fitted, tmp_path, query):
    out = tmp_path / "o"
    argv = ["--table", str(fitted / "runs.csv"), "--holdout", query, "--out", str(out), "--bootstrap", "0"]  # fmt: skip
    assert fit_main([*argv, "--no-plots"]) == 0
    res = json.loads((out / "fit.json").read_text())
    assert res["n_runs"]["holdout"] == 12 and res["settings"]["holdout"] == query


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_params=0", "n_params=0: must be a finite number > 0"),
        ("n_params=.", "n_params=.: not a count"),
        ("tokens=0", "tokens=0: must be a finite number > 0"),
        ("tokens=-5", "tokens=-5: not a count"),
        ("group_size=abc", "group_size=abc: allowed an integer >= 2 or channel"),
        ("group_size=1", "group_size=1: allowed an integer >= 2 or channel"),
        ("hidden_size=abc", "hidden_size=abc: not a count"),
    ],
)
def test_predict_refuses_bad_values(fitted, override, message, capsys):
    good = {
        "n_params": "1e9",
        "tokens": "20B",
        "scheme": "w4a4",
        "format": "int4",
        "group_size": "128",
    }
    key = override.split("=")[0]
    argv = ["--fit", str(fitted), *(f"{k}={v}" for k, v in good.items() if k != key), override]
    assert predict_main(argv) == 2
    assert message in capsys.readouterr().err


def test_prediction_interval_contains_confidence_interval_and_point(fitted, capsys):
    from qat_sweep.analysis.predict import SavedFit, predict_point

    saved = SavedFit.load(fitted)
    for n, d, g in ((1e8, 2e9, 32), (7e9, 140e9, 128), (7e10, 1.4e12, 256)):
        pred = predict_point(saved, n, d, "w4a4/int4", g)
        for name in ("bf16_loss", "delta", "qat_loss"):
            item = pred[name]
            (clo, chi), (plo, phi) = item["ci95"], item["pi95"]
            assert plo <= clo <= item["value"] <= chi <= phi, (name, item)
        lo, hi = pred["eff_multiplier"]["ci95"]
        assert lo <= pred["eff_multiplier"]["value"] <= hi
    # A setting fitted from one (N, D) cell: its intervals carry the caveat, in text and JSON.
    argv = ["--fit", str(fitted), "n_params=3e8", "tokens=50B", "scheme=w4a4", "format=fp4", "group_size=64"]  # fmt: skip
    assert predict_main([*argv, "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["delta"]["ci95"] is None and pred["delta"]["caveats"]
    assert any("not identifiable" in c for c in pred["delta"]["caveats"])
    assert predict_main(argv) == 0
    assert "warning: delta law w4a4/fp4" in capsys.readouterr().out


def test_unreadable_fit_and_out_file_exit_2(fitted, tmp_path, capsys):
    (tmp_path / "fit.json").write_text("{truncated")
    argv = ["n_params=1e9", "tokens=20B"]
    assert predict_main(["--fit", str(tmp_path), *argv]) == 2
    assert "cannot read the fit" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert fit_main(["--table", str(fitted / "runs.csv"), "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


FORMATS_SWEEP = """
overrides: [data=demo, "data.dir={data}", logger=none, train.threads=1, eval.batches=2,
            eval.batch_seqs=8]
twins: true
_cells: {{models: &models [0.04M, 0.07M]}}
subgrids:
  int4: {{model: *models, tokens: 40960, quant: w4a4, quant.group_size: 32}}
  blocks:
    model: *models
    tokens: 40960
    quant: w4a4
    quant.format: [mxfp4, nvfp4, nvint4]
    quant.group_size: null
  rotated:
    model: *models
    tokens: 40960
    quant: w4a4
    quant.format: mxint4
    quant.group_size: null
    quant.rotation: hadamard
"""


@pytest.mark.slow
def test_tiny_formats_sweep_trains_fits_and_compares_every_format(
    tmp_path: Path, demo_data: Path
) -> None:
    """BF16 and the block formats (one rotated) on two micro presets, 20 steps each, through
    the local launcher and `fit`: it runs through and the report compares every format."""
    from qat_sweep.commands.launch import main as launch_main

    sweep, runs, out = tmp_path / "formats_tiny.yaml", tmp_path / "runs", tmp_path / "fit"
    sweep.write_text(FORMATS_SWEEP.format(data=demo_data))
    assert launch_main([f"sweep={sweep}", "launcher=local", f"paths.runs={runs}"]) == 0
    records = [json.loads(p.read_text()) for p in (runs / "formats_tiny").glob("*/result.json")]
    assert len(records) == 12 and all(r["status"] == "completed" for r in records)
    rotated = next(r for r in records if r["format"] == "mxint4-had")
    assert rotated["group_size"] == 32
    assert rotated["metrics"]["quant"]["sites"]["fc2"]["kurtosis_rotated"] is not None
    argv = ["--runs", str(runs / "formats_tiny"), "--out", str(out), "--bootstrap", "20"]
    assert fit_main([*argv, "--no-plots"]) == 0
    result = json.loads((out / "fit.json").read_text())
    present = {f"w4a4/{r['format']}" for r in records if r["scheme"] != "bf16"}
    assert present == {"w4a4/int4", "w4a4/mxfp4", "w4a4/nvfp4", "w4a4/nvint4", "w4a4/mxint4-had"}
    compared = result["analyses"]["formats"]["settings"]
    assert set(compared) == present
    assert all(item["paired"] == 2 for item in compared.values())
    assert compared["w4a4/nvfp4"]["mean_delta_per_G"].keys() == {"16"}
    report = (out / "report.md").read_text()
    assert "Formats compared" in report and all(key in report for key in present)


# ---------------------------------------------------------------- candidate laws


def test_fit_json_laws_and_selection(fitted):
    """Every setting lists every candidate law (the paper's always), the selected law's numbers
    are the top-level ones, and bootstrap.npz holds each fitted law's draws."""
    import numpy as np
    from qat_sweep.analysis.law.compare import CRITERIA
    from qat_sweep.analysis.law.formulas import LAWS

    res = json.loads((fitted / "fit.json").read_text())
    draws = np.load(fitted / "bootstrap.npz")
    for key, fit in res["delta"].items():
        assert set(fit["laws"]) == set(LAWS) and fit["laws"]["paper"]["fitted"]
        chosen = fit["laws"][fit["selected"]]
        assert fit["law"] == fit["selected"] and fit["selection"]["why"]
        assert fit["params"] == chosen["params"] and fit["ci95"] == chosen["ci95"]
        for name, entry in fit["laws"].items():
            if not entry["fitted"]:
                assert entry["why"]
                continue
            assert set(entry["held_out"]) == set(CRITERIA)
            assert entry["n_params"] >= 1 and "aicc" in entry and "in_sample" in entry
            for p, ci in entry["ci95"].items():  # every interval written holds its estimate
                if ci is not None:
                    assert ci[0] <= entry["params"][p] <= ci[1], (key, name, p)
            stored = draws.get(f"delta__{key.replace('/', '__')}__law__{name}")
            if entry["ci95"] and any(v is not None for v in entry["ci95"].values()):
                assert stored.shape[1] == len(entry["params"])
    assert res["delta"]["w4a4/int4"]["law"] == "paper"
    assert "## Which law holds" in (fitted / "report.md").read_text()


def test_fit_law_forces_one_law_and_predict_says_which(fitted, tmp_path, capsys):
    out = tmp_path / "forced"
    argv = ["--table", str(fitted / "runs.csv"), "--out", str(out), "--bootstrap", "50"]
    assert fit_main([*argv, "--no-plots", "--law", "levelled_D"]) == 0
    res = json.loads((out / "fit.json").read_text())
    int4 = res["delta"]["w4a4/int4"]
    assert int4["law"] == "levelled_D" and int4["selection"]["forced"]
    assert set(int4["params"]) == {"k", "gamma_N", "gamma_D", "gamma_G", "c"}
    fp4 = res["delta"]["w4a4/fp4"]  # one cell: the levelling law cannot be fitted there
    assert fp4["law"] == "paper" and "not fitted for this setting" in fp4["selection"]["why"]
    assert fit_main([*argv, "--law", "quadratic"]) == 2
    assert "unknown law" in capsys.readouterr().err
    point = ["n_params=7e9", "hidden_size=4096", "tokens=140B", "scheme=w4a4", "format=int4",
             "group_size=128"]  # fmt: skip
    assert predict_main(["--fit", str(out), *point]) == 0
    assert "delta law: levelled_D (selected by the fit)" in capsys.readouterr().out
    assert predict_main(["--fit", str(out), *point, "--law", "no_D", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    no_d = res["delta"]["w4a4/int4"]["laws"]["no_D"]["params"]
    want = no_d["k"] * (1 / 7e9) ** no_d["gamma_N"] * 7.0 ** no_d["gamma_G"]
    assert pred["law"] == "no_D" and pred["law_source"] == "--law"
    assert pred["delta"]["value"] == pytest.approx(want, rel=1e-9)
    assert pred["delta"]["ci95"][0] <= pred["delta"]["value"] <= pred["delta"]["ci95"][1]
    point_fp4 = ["n_params=3e8", "tokens=50B", "scheme=w4a4", "format=fp4", "group_size=64"]
    assert predict_main(["--fit", str(out), *point_fp4, "--law", "levelled_D"]) == 2
    assert "levelled_D was not fitted" in capsys.readouterr().err


def test_sealed_predictions_are_written_once_checked_and_tamper_evident(fitted, tmp_path, capsys):
    import os
    import stat

    from qat_sweep.analysis.seal import fit_hash, read_sealed

    runs = tmp_path / "runs"
    for record in table_to_records(synthetic_table(seed=7, cell_noise=0.003), sweep="paper"):
        (runs / "paper" / record["run_key"]).mkdir(parents=True)
        (runs / "paper" / record["run_key"] / "result.json").write_text(json.dumps(record))
    sealed = runs / "paper" / "predictions"
    point = ["model=973M", "tokens=100B", "scheme=w4a4", "format=int4", "group_size=128"]
    target = sealed / "973M-100B.json"
    assert predict_main(["--fit", str(fitted), *point, "--seal", str(target)]) == 0
    assert "sealed:" in capsys.readouterr().err
    before = target.read_bytes()
    assert not os.stat(target).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    status, body, _ = read_sealed(target)
    assert status == "ok" and body["fit"]["sha256"] == fit_hash(fitted)
    assert body["git_commit"] and body["created"] and body["predictions"][0]["law"] == "paper"
    assert predict_main(["--fit", str(fitted), *point, "--seal", str(target)]) == 2
    assert "never rewritten" in capsys.readouterr().err and target.read_bytes() == before
    forged = json.loads(before)
    forged["sealed"]["predictions"][0]["qat_loss"]["value"] += 0.01  # a better-looking number
    (sealed / "forged.json").write_text(json.dumps(forged))
    out = tmp_path / "report"
    argv = [
        "sweep=paper",
        f"paths.runs={runs}",
        "--out",
        str(out),
        "--bootstrap",
        "30",
        "--no-plots",
    ]
    assert fit_main(argv) == 0
    res = json.loads((out / "fit.json").read_text())
    found = {item["file"]: item for item in res["preregistered"]}
    assert (
        found["forged.json"]["status"] == "tampered"
        and "hash mismatch" in found["forged.json"]["why"]
    )
    ok = found["973M-100B.json"]
    assert ok["status"] == "ok"
    check = ok["predictions"][0]
    assert check["n_runs"] == 1  # the held-out 973M/100B G=128 run of the sweep
    qat = check["qat_loss"]
    assert qat["measured"] == pytest.approx(qat["predicted"], rel=0.05)
    assert qat["covered"] == (qat["pi95"][0] <= qat["measured"] <= qat["pi95"][1])
    report = (out / "report.md").read_text()
    assert "## Preregistered predictions" in report and "TAMPERED" in report
    assert target.read_bytes() == before  # fit never rewrites a sealed file
    assert fit_main([*argv, "--sealed", str(tmp_path / "nowhere")]) == 2
