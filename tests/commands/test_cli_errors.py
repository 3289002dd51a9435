"""Every user mistake we know of, through the `qat-sweep` CLI: exit code 2, no traceback, a
message naming the key or file, and nothing started (no run directory, no job)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qat_sweep.cli import main

TINY_SWEEP = "overrides: [data=demo, logger=none]\nsubgrids: {a: {model: 0.2M, tokens: 4096}}\n"
FILES = {
    "tiny.yaml": TINY_SWEEP,
    "syntax.yaml": "overrides: [data=demo\nsubgrids: {a: {model: 0.2M}}\n",
    "topkey.yaml": "subgrids: {a: {model: 0.2M}}\nextra: 1\n",
    "emptyaxis.yaml": "subgrids: {a: {model: []}}\n",
    "axiskey.yaml": "subgrids: {a: {model: 0.2M, optim.lrr: 1}}\n",
    "notmapping.yaml": "subgrids: [a, b]\n",
    "wrongname.yaml": "name: other\nsubgrids: {a: {model: 0.2M}}\n",
    "empty.yaml": "",
    "badgroup.yaml": "subgrids: {a: {model: 0.2M, quant: w4a4, quant.group_size: 48}}\n",
    "holdout.yaml": "holdout: [nope]\nsubgrids: {a: {model: 0.2M}}\n",
    "blockgroup.yaml": "subgrids: {a: {model: 0.2M, quant: w4a4, quant.format: mxfp4, "
    "quant.group_size: [null, 16]}}\n",
    "rotblock.yaml": "subgrids: {a: {model: 0.2M, quant: w4a4, quant.format: nvfp4, "
    "quant.group_size: null, quant.rotation: hadamard, quant.rotation_block: 128}}\n",
    "profile_key.yaml": "kind: local\ngpus: 2\n",
    "profile_syntax.yaml": "kind: [local\n",
    "profile_kind.yaml": "kind: cloud\n",
    "profile_type.yaml": "kind: slurm\ncpus_per_task: many\n",
    "three_gpus.yaml": "kind: slurm\ngpus_per_node: 3\n",
    "no_gpu.yaml": "kind: slurm\ngpus_per_node: 0\n",
    "table.csv": "run_key,loss\nx,3.1\n",
    "notes.txt": "not a corpus",
}
RUN = ["model=0.2M", "tokens=4096", "logger=none"]  # tiny, so a case that wrongly passes is quick

W4A4 = ["train", "quant=w4a4"]
NVFP4 = [*W4A4, "quant.format=nvfp4", "quant.group_size=null"]
ROTATED = [*W4A4, "quant.group_size=32", "quant.rotation=hadamard"]  # 0.2M: widths 64 and 256

# (id, argv, substring the error must contain); {tmp} is the case's directory with FILES.
TINY = ["launch", "sweep={tmp}/tiny.yaml"]  # the launches below: a valid sweep, a bad setting
LOCAL = [*TINY, "launcher=local"]
CASES = [
    # train: checked as plan checks one run, before Hydra and the trainer start
    ("train-tokens-abc", ["train", "tokens=abc"], "tokens=abc"),
    ("train-tokens-negative", ["train", "tokens=-5"], "tokens=-5"),
    ("train-tokens-zero", ["train", "tokens=0"], "tokens=0"),
    ("train-tokens-short", ["train", "tokens=100"], "smaller than one global batch"),
    ("train-seed-abc", ["train", "seed=abc"], "seed='abc'"),
    ("train-seed-negative", ["train", "seed=-1"], "seed=-1"),
    ("train-preset", ["train", "model=7B"], "model presets:"),
    ("train-scheme", ["train", "quant=w3a3"], "schemes: bf16"),
    ("train-group", ["train", "quant=w4a4", "quant.group_size=48"], "allowed: 2, 4, 8, 16"),
    ("train-format", ["train", "quant=w4a4", "quant.format=int3"], "unknown format 'int3'"),
    ("train-block-group", [*W4A4, "quant.format=mxfp4"], "group_size=128 with format mxfp4"),
    ("train-block-g16", [*W4A4, "quant.format=mxfp4", "quant.group_size=16"], "null or 32"),
    (
        "train-scale-rounding",
        [*NVFP4, "quant.scale_rounding=rceil"],
        "scale_rounding='rceil' with format nvfp4: only formats with power-of-two",
    ),
    ("train-scale-rounding-int4", [*W4A4, "quant.scale_rounding=floor"], "with format int4"),
    ("train-int4-range", [*NVFP4, "quant.int4_range=full"], "only mxint4, nvint4"),
    ("train-lac-block", [*NVFP4, "quant.act_quantizer=lac"], "act_quantizer='lac' with format"),
    ("train-rotation", [*W4A4, "quant.rotation=givens"], "allowed: none, hadamard"),
    ("train-rotation-pow2", [*ROTATED, "quant.rotation_block=48"], "a power of two >= 2"),
    (
        "train-rotation-divides",
        [*ROTATED, "quant.rotation_block=128"],
        "quant.rotation_block=128 does not divide the reduction dim of blocks.0.attn.q",
    ),
    ("train-rotation-channel", [*ROTATED, "quant.group_size=channel"], "not a power of two"),
    ("train-rotation-bf16", ["train", "quant.rotation=hadamard"], "with scheme bf16"),
    ("train-micro", ["train", "train.micro_batch_seqs=3"], "train.micro_batch_seqs=3"),
    ("train-micro-zero", ["train", "train.micro_batch_seqs=0"], "train.micro_batch_seqs=0"),
    ("train-device", ["train", "train.device=gpu"], "train.device='gpu': allowed: auto"),
    ("train-eval-batches", ["train", "eval.batches=0"], "eval.batches=0"),
    ("train-eval-seqs", ["train", "eval.batch_seqs=0"], "eval.batch_seqs=0"),
    ("train-lr-negative", ["train", "optim.lr=-1"], "optim.lr=-1: must be a number > 0"),
    ("train-lr-abc", ["train", "optim.lr=abc"], "optim.lr='abc'"),
    ("train-betas", ["train", "optim.betas=[0.9]"], "optim.betas"),
    ("train-schedule", ["train", "optim.schedule=linear"], "allowed: cosine, wsd"),
    ("train-clip", ["train", "optim.grad_clip=0"], "optim.grad_clip=0"),
    ("train-unknown-key", ["train", "foo=1"], "unknown config key 'foo'"),
    (
        "train-deleted-key",
        ["train", "quant=w4a4", "~quant.format"],
        "config key 'quant.format' cannot be deleted",
    ),
    ("train-no-equals", ["train", "tokens"], "key=value"),
    ("train-data-group", ["train", "data=nope"], "data=nope"),
    ("train-data-missing", ["train", "data=custom", "paths.data={tmp}/none"], "not prepared"),
    ("train-progress", ["train", "logger.progress_every_steps=0"], "progress_every_steps=0"),
    # plan
    ("plan-no-sweep", ["plan"], "missing sweep=NAME"),
    ("plan-unknown-sweep", ["plan", "sweep=nope"], "unknown sweep 'nope'"),
    ("plan-seed-abc", ["plan", "sweep=demo", "seed=abc"], "seed='abc'"),
    ("plan-lr-abc", ["plan", "sweep=demo", "optim.lr=abc"], "optim.lr='abc'"),
    ("plan-tokens-abc", ["plan", "sweep=demo", "tokens=abc"], "tokens=abc"),
    ("plan-micro", ["plan", "sweep=demo", "train.micro_batch_seqs=3"], "micro_batch_seqs=3"),
    ("plan-eval", ["plan", "sweep=demo", "eval.batches=0"], "eval.batches=0"),
    ("plan-device", ["plan", "sweep=demo", "train.device=gpu"], "train.device='gpu'"),
    ("plan-unknown-key", ["plan", "sweep=demo", "foo.bar=1"], "unknown config key 'foo.bar'"),
    (
        "plan-deleted-key",
        ["plan", "sweep=demo", "~quant.format"],
        "config key 'quant.format' cannot be deleted",
    ),
    (
        "plan-added-model-key",
        ["plan", "sweep=demo", "+model.dropout=0.1"],
        "unknown config key 'model.dropout'; allowed: name, n_layers",
    ),
    ("plan-syntax", ["plan", "sweep={tmp}/syntax.yaml"], "syntax.yaml"),
    ("plan-empty", ["plan", "sweep={tmp}/empty.yaml"], "empty.yaml"),
    ("plan-top-key", ["plan", "sweep={tmp}/topkey.yaml"], "unknown key(s) ['extra']"),
    ("plan-empty-axis", ["plan", "sweep={tmp}/emptyaxis.yaml"], "empty axis"),
    ("plan-axis-key", ["plan", "sweep={tmp}/axiskey.yaml"], "optim.lrr: unknown config key"),
    ("plan-not-mapping", ["plan", "sweep={tmp}/notmapping.yaml"], "'subgrids' must be"),
    ("plan-name", ["plan", "sweep={tmp}/wrongname.yaml"], "must equal the file name"),
    ("plan-group", ["plan", "sweep={tmp}/badgroup.yaml"], "group size 48"),
    ("plan-holdout", ["plan", "sweep={tmp}/holdout.yaml"], "holdout: 'nope'"),
    ("plan-block-group", ["plan", "sweep={tmp}/blockgroup.yaml"], "group_size=16 with format"),
    ("plan-rotation-block", ["plan", "sweep={tmp}/rotblock.yaml"], "rotation_block=128 does not"),
    ("plan-mfu", ["plan", "sweep=demo", "mfu=2"], "0 < mfu <= 1"),
    ("plan-mfu-abc", ["plan", "sweep=demo", "mfu=abc"], "mfu and peak_tflops must be numbers"),
    ("plan-flag", ["plan", "sweep=demo", "--bogus"], "unknown option '--bogus'"),
    ("plan-launcher", ["plan", "sweep=demo", "launcher=nope"], "unknown launch profile 'nope'"),
    (
        "plan-ranks",
        ["plan", "sweep={tmp}/tiny.yaml", "launcher={tmp}/three_gpus.yaml"],
        "does not split over the 3 GPUs",
    ),
    (
        "plan-cuda-no-gpu",
        ["plan", "sweep={tmp}/tiny.yaml", "launcher={tmp}/no_gpu.yaml", "train.device=cuda"],
        "gives each run no GPU",
    ),
    # launch: nothing submitted, no run directory
    ("launch-no-launcher", [*TINY], "missing launcher=PROFILE"),
    ("launch-profile", [*TINY, "launcher=nope"], "'nope'"),
    ("launch-syntax", ["launch", "sweep={tmp}/syntax.yaml", "launcher=local"], "syntax.yaml"),
    ("launch-device", [*LOCAL, "train.device=gpu"], "train.device='gpu'"),
    ("launch-micro", [*LOCAL, "train.micro_batch_seqs=3"], "train.micro_batch_seqs=3"),
    ("launch-lr", [*LOCAL, "optim.lr=-1"], "optim.lr=-1"),
    ("launch-eval", [*LOCAL, "eval.batches=0"], "eval.batches=0"),
    ("launch-profile-key", [*TINY, "launcher={tmp}/profile_key.yaml"], "unknown key(s) ['gpus']"),
    ("launch-profile-syntax", [*TINY, "launcher={tmp}/profile_syntax.yaml"], "profile_syntax.yaml"),
    ("launch-profile-kind", [*TINY, "launcher={tmp}/profile_kind.yaml"], "kind must be one of"),
    (
        "launch-profile-type",
        [*TINY, "launcher={tmp}/profile_type.yaml"],
        "cpus_per_task must be int, got 'many'",
    ),
    ("launch-no-cluster", [*TINY, "launcher=ci"], "sinfo"),
    ("launch-hydra-no-cluster", [*TINY, "launcher=ci", "--print-hydra-overrides"], "sinfo"),
    # status
    ("status-no-sweep", ["status"], "missing sweep=NAME"),
    ("status-unknown-sweep", ["status", "sweep=nope"], "unknown sweep 'nope'"),
    ("status-watch", ["status", "sweep={tmp}/tiny.yaml", "--watch=abc"], "--watch"),
    ("status-watch-zero", ["status", "sweep={tmp}/tiny.yaml", "--watch=0"], "--watch=0"),
    # bench, prepare, the command itself
    ("bench-preset", ["bench", "model=7B"], "7B"),
    ("bench-batch", ["bench", "batch=abc"], "batch"),
    ("prepare-input", ["prepare", "input={tmp}/none.txt", "out={tmp}/out"], "none.txt"),
    ("prepare-key", ["prepare", "input={tmp}/notes.txt", "out={tmp}/out", "bogus=1"], "bogus"),
    ("command", ["nope"], "unknown command 'nope'"),
]

# fit/predict inputs that once raised (ZeroDivisionError, int('abc')) instead of a clean refusal.
ANALYSIS_CASES = [
    ("fit-no-table", ["fit", "--table", "{tmp}/none.csv", "--out", "{tmp}/fit"], "none.csv"),
    ("fit-bad-table", ["fit", "--table", "{tmp}/table.csv", "--out", "{tmp}/fit"], "columns"),
    ("fit-no-runs", ["fit", "--runs", "{tmp}/none", "--out", "{tmp}/fit"], "none"),
    ("predict-no-fit", ["predict", "--fit", "{tmp}/none", "model=74M", "tokens=20B"], "none"),
    ("predict-n-zero", ["predict", "--fit", "{fit}", "n_params=0", "tokens=20B"], "n_params"),
    (
        "predict-group-abc",
        ["predict", "--fit", "{fit}", "model=74M", "tokens=20B", "scheme=w4a4", "group_size=abc"],
        "group_size",
    ),
    (
        "predict-hidden-abc",
        ["predict", "--fit", "{fit}", "n_params=1e8", "hidden_size=abc", "tokens=20B"],
        "hidden_size",
    ),
    ("predict-tokens-abc", ["predict", "--fit", "{fit}", "model=74M", "tokens=abc"], "tokens"),
]


@pytest.fixture
def case_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)  # runs/ and data/ defaults land here, where we look for them
    monkeypatch.delenv("SLURM_CONF", raising=False)  # no cluster: launcher=ci must be refused
    return tmp_path


def _run(argv: list[str], where: Path, fit: Path | None, capsys) -> tuple[int, str]:
    args = [a.format(tmp=where, fit=fit) for a in argv]
    if args[0] == "train":
        args[1:1] = [*RUN, f"paths.runs={where}/runs"]  # before the case: its value wins
    elif args[0] in ("launch", "status"):
        args.append(f"paths.runs={where}/runs")
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(argv, expected, case_dir: Path, capsys) -> None:
    code, output = _run(argv, case_dir, None, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert expected in output, output
    assert not (case_dir / "runs").exists(), "a refused command must not start a run"


@pytest.mark.parametrize(
    ("argv", "expected"), [c[1:] for c in ANALYSIS_CASES], ids=[c[0] for c in ANALYSIS_CASES]
)
def test_bad_analysis_input_is_refused_cleanly(
    argv, expected, case_dir: Path, saved_fit: Path, capsys
) -> None:
    code, output = _run(argv, case_dir, saved_fit, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert expected in output, output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused(case_dir: Path, capsys) -> None:
    code, output = _run(["train", "train.device=cuda"], case_dir, None, capsys)
    assert code == 2 and "no CUDA device" in output
    argv = ["launch", "sweep={tmp}/tiny.yaml", "launcher=local", "train.device=cuda"]
    code, output = _run(argv, case_dir, None, capsys)
    assert code == 2 and "no CUDA device" in output and "nothing was launched" in output


def test_a_problem_shared_by_every_run_is_reported_once(case_dir: Path, capsys) -> None:
    code, output = _run(
        ["plan", "sweep=demo", "optim.lr=-1", "eval.batches=0"], case_dir, None, capsys
    )
    assert code == 2
    assert "2 problem(s) in 33 runs" in output
    assert "optim.lr=-1: must be a number > 0 (all 33 runs)" in output
    assert output.count("optim.lr=-1") == 1 and output.count("eval.batches=0") == 1
