"""The bench command: argument handling, FLOPs formula and a tiny side-by-side run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qat_sweep.commands.bench import main, parse_args
from qat_sweep.estimates.flops import flops_per_token, peak_flops
from qat_sweep.model.presets import load_preset


def test_defaults_and_bf16_always_measured() -> None:
    settings = parse_args(["model=0.2M", "schemes=w4a4,w16a4", "group_size=channel"])
    assert settings.schemes == ("bf16", "w4a4", "w16a4")
    assert settings.group_sizes == ("channel",) and settings.seq_len == 128
    assert settings.vocab_size == 4096
    assert parse_args(["model=74M"]).vocab_size == 100278


@pytest.mark.parametrize(
    ("arg", "pattern"),
    [
        ("batchsize=8", "'batchsize=8'"),
        ("steps", "'steps'"),
        ("schemes=bf16,w2a2", r"\['w2a2'\]"),
        ("model=3M", "'3M'"),
        ("steps=ten", "steps='ten'"),
        ("compile=maybe", "compile='maybe': allowed: auto, true, false, both"),
        ("device=tpu", "device='tpu': allowed: auto, cpu, cuda"),
        ("warmup=-1", "warmup='-1': must be >= 0"),
        ("format=int4,int3", r"unknown formats \['int3'\]; allowed: int4, int4_sym, fp4, mxfp4"),
        ("rotation=givens", r"unknown rotations \['givens'\]; allowed: none, hadamard"),
    ],
)
def test_bad_arguments_are_named(arg: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_args([arg])


def test_main_reports_errors_with_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope=1"]) == 2
    assert "'nope=1'" in capsys.readouterr().err


def test_flops_formula() -> None:
    cfg = load_preset("1M")
    d, n_layers = cfg.hidden_size, cfg.n_layers
    expected = 6 * (cfg.n_params + 1000 * d) + 12 * n_layers * 128 * d
    assert flops_per_token(cfg, 128, 1000) == expected


def test_no_peak_on_cpu() -> None:
    assert peak_flops(torch.device("cpu")) is None


def test_tiny_run_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    args = ["model=0.2M", "batch=2", "micro_batch=1", "seq_len=16", "steps=2", "warmup=1"]
    args += ["schemes=w4a4", "group_size=16,channel", "compile=false"]
    assert main([*args, "vocab_size=64", f"json={out}"]) == 0
    table = capsys.readouterr().out
    assert "w4a4" in table and "vs bf16" in table and "(micro 1)" in table
    result = json.loads(out.read_text())
    rows = {(row["scheme"], row["group_size"]): row for row in result["results"]}
    assert set(rows) == {("bf16", None), ("w4a4", 16), ("w4a4", "channel")}
    assert rows["w4a4", "channel"]["act_quantizer"] == "lac"  # the paper's rule for channel
    assert rows["w4a4", 16]["act_quantizer"] == "absmax"
    assert rows["bf16", None]["rel_to_bf16"] == 1.0 and rows["w4a4", 16]["mfu"] is None
    assert all(len(row["times_s"]) == 2 and row["median_s"] > 0 for row in rows.values())
    assert result["n_params"] == load_preset("0.2M").n_params and result["micro_batch"] == 1


def test_block_formats_and_rotation_side_by_side(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    args = ["model=0.2M", "batch=2", "seq_len=16", "steps=1", "warmup=1", "schemes=w4a4"]
    args += ["format=int4,mxfp4,nvint4", "group_size=16", "rotation=none,hadamard"]
    assert main([*args, "compile=false", "vocab_size=64", f"json={out}"]) == 0
    rows = json.loads(out.read_text())["results"]
    timed = {(r["format"], r["group_size"], r["rotation"]) for r in rows if r["scheme"] != "bf16"}
    assert timed == {
        (fmt, group, rotation)
        for fmt, group in (("int4", 16), ("mxfp4", 32), ("nvint4", 16))
        for rotation in ("none", "hadamard")
    }
    assert all(r["rel_to_bf16"] > 0 and r["act_quantizer"] == "absmax" for r in rows[1:])


def test_micro_batch_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="batch=6 is not a multiple of micro_batch=4"):
        parse_args(["batch=6", "micro_batch=4"])
    assert parse_args(["compile=both"]).compile == (True, False)
    assert parse_args(["compile=auto", "device=cpu"]).compile == (False,)


def test_bad_seq_len_for_preset() -> None:
    assert main(["model=0.2M", "seq_len=4096", "steps=1"]) == 2


BLOCKS = [("mxfp4", 32), ("nvfp4", 16), ("mxint4", 32), ("nvint4", 16)]
ROTATED = [("int4", 32), ("mxfp4", 32), ("nvfp4", 16)]


@pytest.mark.slow
def test_gpu_check_runs_scaled_down_on_cpu(tmp_path: Path) -> None:
    script = Path(__file__).parents[2] / "scripts" / "gpu-check"
    proc = subprocess.run(
        [sys.executable, str(script), "--cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["mode"] == "cpu"
    variants = {
        (r["scheme"], r["format"], r["group_size"], r["rotation"], r["act_quantizer"], r["compile"])
        for r in result["bench"]
    }
    both, compiled_only = (True, False), (True,)
    expected = [
        (("bf16", "bf16", None, "none", None), both),
        (("w4a4", "int4", 32, "none", "absmax"), both),
        (("w4a4", "int4", "channel", "none", "lac"), both),
        *((("w4a4", f, g, "none", "absmax"), both) for f, g in BLOCKS),
        *((("w4a4", f, g, "hadamard", "absmax"), compiled_only) for f, g in ROTATED),
    ]
    assert variants == {(*v, c) for v, settings in expected for c in settings}
    trained = result["train"]
    record = json.loads(Path(trained["record"]).read_text())
    assert record["status"] == "completed" and record["metrics"]["steps"] == 10
    assert record["scheme"] == "w4a4" and record["loss"] == trained["loss"]
    assert record["config"]["train"]["micro_batch_seqs"] == 8
    assert "bench 0.2M w4a4 int4 G=channel lac compiled" in proc.stdout and "MFU" in proc.stdout
    assert "bench 0.2M w4a4 mxfp4-had G=32 absmax compiled" in proc.stdout
    assert len(result["targets"]) == 6  # compiled unrotated W4A4 vs BF16; MFU only on a GPU
