"""The memory model against measurement: saved tensors, parameters, gradients, AdamW states."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from qat_sweep.config.compose import compose_run
from qat_sweep.estimates.device_fit import HEADROOM
from qat_sweep.estimates.memory import GB, estimate_memory
from qat_sweep.model.precision import QuantConfig
from qat_sweep.model.presets import load_preset
from qat_sweep.model.transformer import build_model
from qat_sweep.sweep.profiles import load_profile

VOCAB = 512
PRESETS = ("0.2M", "0.5M", "1M")
QUANTS = {
    "bf16": None,
    "w4a4_g32": QuantConfig("w4a4", "int4", 32, "absmax"),
    "w4a4_channel_lac": QuantConfig("w4a4", "int4", "channel", "lac"),
    "w4a4_g32_lsq": QuantConfig("w4a4", "int4", 32, weight_quantizer="lsq"),
    "w4a4_tensor_lwc": QuantConfig("w4a4", "int4", "tensor", weight_quantizer="lwc"),
    "w4a4_g32_absmax_grad": QuantConfig("w4a4", "int4", 32, absmax_grad=True),
}


def measure(preset: str, quant: QuantConfig | None, micro: int, autocast: bool) -> dict:
    """Bytes of one real step: distinct saved storages (not parameters), then the state."""
    torch.manual_seed(0)
    cfg = load_preset(preset)
    model = build_model(cfg, quant, VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, VOCAB, (micro, cfg.seq_len))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        loss = model(x, x.roll(1, dims=1))
    loss.backward()
    optimizer.step()
    buffers = sum(b.nbytes for b in model.buffers())
    return {
        "saved": sum(saved.values()) + buffers,  # RoPE tables: buffers that sdpa's inputs save
        "state": sum(p.nbytes for p in model.parameters())
        + sum(p.grad.nbytes for p in model.parameters())
        + sum(t.nbytes for s in optimizer.state.values() for t in s.values() if t.ndim)
        + buffers,
    }


def estimate(preset: str, quant: QuantConfig | None, micro: int, dtype: str):
    cfg = load_preset(preset)
    return estimate_memory(
        cfg, quant, vocab_size=VOCAB, seq_len=cfg.seq_len, micro_batch_seqs=micro,
        dtype=dtype, device="cpu",
    )  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("scheme", list(QUANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_is_within_15_percent_of_measured_bytes(
    preset: str, scheme: str, dtype: str
) -> None:
    """fp32 is the CPU trainer; bf16 autocast on CPU saves what CUDA autocast saves."""
    quant = QUANTS[scheme]
    measured = measure(preset, quant, micro=4, autocast=dtype == "bf16")
    est = estimate(preset, quant, 4, dtype)
    assert est.saved_bytes == pytest.approx(measured["saved"], rel=0.15), est.saved
    assert est.state_bytes == pytest.approx(measured["state"], rel=0.15), est.state
    total = measured["saved"] + measured["state"]
    assert est.saved_bytes + est.state_bytes == pytest.approx(total, rel=0.15)


@pytest.mark.parametrize("scheme", list(QUANTS))
@pytest.mark.parametrize("qk_norm", [False, True])
def test_parameters_counted_are_the_models_own(scheme: str, qk_norm: bool) -> None:
    """LAC factors, LSQ steps, LWC logits and the q/k norm gains: the estimate counts each."""
    cfg = replace(load_preset("0.2M"), qk_norm=qk_norm)
    model = build_model(cfg, QUANTS[scheme], VOCAB)  # VOCAB is a multiple of 128: no padding
    est = estimate_memory(cfg, QUANTS[scheme], vocab_size=VOCAB, seq_len=8, micro_batch_seqs=1)
    assert est.state["parameters"] == 4 * sum(p.numel() for p in model.parameters())


def test_items_scale_the_way_the_trainer_allocates() -> None:
    cfg = load_preset("973M")
    quant = QuantConfig("w4a4", "int4", 128)
    args = dict(vocab_size=100_278, seq_len=2048, eval_batch_seqs=16)
    one = estimate_memory(cfg, quant, micro_batch_seqs=1, parallelism="ddp", world_size=8, **args)
    two = estimate_memory(cfg, quant, micro_batch_seqs=2, parallelism="ddp", world_size=8, **args)
    fsdp = estimate_memory(cfg, quant, micro_batch_seqs=1, parallelism="fsdp", world_size=8, **args)
    ckpt = estimate_memory(
        cfg, quant, micro_batch_seqs=1, parallelism="ddp", world_size=8,
        activation_checkpointing=True, **args,
    )  # fmt: skip
    # 973M with the OLMo-2 vocabulary: 1.38B parameters -> 16 bytes each of fp32 params, grads and AdamW ~ 22 GB.
    assert one.state["parameters"] + one.state["optimizer"] == pytest.approx(1.38e9 * 12, rel=0.02)
    # Activations grow with the micro-batch, the quantized weight copies do not.
    assert two.saved["activations"] == pytest.approx(2 * one.saved["activations"], rel=0.01)
    assert two.saved["quantized_weights"] == one.saved["quantized_weights"]
    # FSDP shards the state 8 ways; checkpointing keeps one block's activations.
    assert fsdp.state["optimizer"] == pytest.approx(one.state["optimizer"] / 8)
    assert ckpt.saved["activations"] < one.saved["activations"] / 4
    # 16 eval sequences of fp32 logits over 100k tokens are ~33 GB.
    assert 30 < one.eval["logits"] / GB < 36


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", list(QUANTS))
def test_estimate_bounds_cuda_max_memory_allocated(scheme: str) -> None:
    """One real bf16-autocast step on the GPU peaks within 15 % of the estimate."""
    cfg, quant, micro = load_preset("20M"), QUANTS[scheme], 8
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model = build_model(cfg, quant, 32_000).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 32_000, (micro, cfg.seq_len), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, x.roll(1, dims=1))
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() - base
    est = estimate_memory(
        cfg, quant, vocab_size=32_000, seq_len=cfg.seq_len, micro_batch_seqs=micro
    )
    assert max(est.train_peak, est.step_peak) == pytest.approx(peak, rel=0.15), est.items()


# ----------------------------------------------------------------------------- sizing in plan


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list, str]:
    from qat_sweep.commands.plan import main as plan_main

    capsys.readouterr()
    code = plan_main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else [], err


def test_plan_sizes_every_paper_run_for_the_a100_profile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, rows, err = plan_json(capsys, "sweep=paper", "launcher=a100-80gb", "--json")
    assert code == 0, err
    assert len(rows) == 289
    for row in rows:
        assert row["memory_gb"] <= 80 * HEADROOM
        assert row["parallelism"] in ("ddp", "fsdp") and row["segments"] >= 1
        # The choice reaches the trainer as execution overrides, outside the run identity.
        assert f"train.micro_batch_seqs={row['micro_batch_seqs']}" in row["overrides"]
        assert f"train.parallelism={row['parallelism']}" in row["overrides"]
        per_gpu = compose_run(row["overrides"]).optim.batch_seqs // row["gpus"]
        assert per_gpu % row["micro_batch_seqs"] == 0
    by_model = {r["model"]: r for r in rows}
    assert by_model["74M"]["gpus"] == 4 and by_model["973M"]["gpus"] == 16  # resources:
    assert by_model["973M"]["run_key"] == compose_run(by_model["973M"]["overrides"]).run_key
    # Hours follow compute: 973M at 200B on 16 GPUs takes far longer than 74M at 10B on 4.
    assert max(r["wall_h"] for r in rows) == max(r["wall_h"] for r in rows if r["model"] == "973M")


def test_sized_wall_clock_and_gpu_hours_count_the_same_flops() -> None:
    """Plan's GPU-hours and sizing's wall clock share one count: hours x GPUs agree."""
    from qat_sweep.sweep.plan import plan_sweep
    from qat_sweep.sweep.sizing import size_sweep

    profile = load_profile("h100-80gb")
    overrides = [*profile.train_overrides(), "train.activation_checkpointing=true"]
    runs = plan_sweep("demo", overrides, strict=False)
    size_sweep(runs, profile, 0.4)
    for run in runs:
        sized = run.sizing.wall_h * run.sizing.gpus
        assert sized == pytest.approx(run.gpu_hours(0.4, profile.peak / 1e12))


def test_launch_submits_one_array_per_resource_shape() -> None:
    from qat_sweep.sweep.launch import job_arrays
    from qat_sweep.sweep.plan import plan_sweep
    from qat_sweep.sweep.sizing import size_sweep

    profile = load_profile("a100-80gb")
    runs = plan_sweep("paper", profile.train_overrides(), strict=False)
    size_sweep(runs, profile, 0.4)
    arrays = job_arrays(runs, replace(profile, max_array_size=1000))
    shapes = sorted((s.nodes, s.gpus_per_node, len(chunk)) for s, chunk in arrays)
    n_973m = sum(r.model == "973M" for r in runs)
    n_small = sum(r.model in ("74M", "145M") for r in runs)
    assert shapes == sorted([(1, 4, n_small), (1, 8, 289 - n_small - n_973m), (2, 8, n_973m)])


def small_gpu_profile(tmp_path: Path, **keys: object) -> str:
    raw = {"kind": "slurm", "gpus_per_node": 1, "gpu_type": "A100", "gpu_mem_gb": 80} | keys
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    return str(path)


def one_run_sweep(tmp_path: Path, model: str) -> str:
    path = tmp_path / "one.yaml"
    grid = {"model": model, "tokens": "20B", "quant": "w4a4", "quant.group_size": 128}
    path.write_text(yaml.safe_dump({"twins": False, "subgrids": {"a": grid}}))
    return str(path)


@pytest.mark.parametrize(
    ("keys", "overrides", "message"),
    [
        ({"gpu_mem_gb": 16}, ["model=973M"], "fits no configuration of profile 'gpus': at least"),
        ({"gpu_mem_gb": None}, [], "gives runs GPUs but no gpu_mem_gb"),
        ({"gpu_type": "V100"}, [], "gpu_type='V100' is not a known GPU; allowed: A100"),
        ({"gpus_per_node": 2}, ["train.micro_batch_seqs=5"], "micro_batch_seqs=5 does not divide"),
        ({}, ["train.parallelism=fsdp"], "train.parallelism=fsdp does not fit 1 process"),
        ({}, ["train.parallelism=zero3"], "train.parallelism='zero3': allowed: auto"),
    ],
)
def test_plan_refuses_runs_it_cannot_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys, overrides, message
) -> None:
    profile = small_gpu_profile(tmp_path, **keys)
    sweep = one_run_sweep(tmp_path, "297M")
    # no limit on passes: another test may have built the small demo corpus these runs read
    limits = ["data.max_epochs=null"]
    code, _, err = plan_json(capsys, f"sweep={sweep}", f"launcher={profile}", *overrides, *limits)
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    if "fits no" in message:  # the run, its estimate and the limit are named
        assert "973M_" in err and "against 16 GB x 0.9 headroom = 14.4 GB per GPU" in err
