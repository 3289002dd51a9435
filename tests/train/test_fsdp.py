"""FSDP2 over gloo on CPU: same loss as one process, exact resume after SIGTERM, checkpointing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from support import finish, start_ranks, train_rows

from qat_sweep.config.compose import compose_run, run_dir
from qat_sweep.delta import execution_difference
from qat_sweep.record import read_record
from qat_sweep.train.distributed import export_slurm_environment
from qat_sweep.train.trainer import train

# 20 steps of 16 x 128 tokens of the smallest preset; two ranks of 8 sequences each.
BASE = [
    "model=0.2M",
    "tokens=40960",
    "logger=none",
    "eval.batches=2",
    "eval.batch_seqs=8",
    "train.threads=1",
    "checkpoint.every_steps=4",
]
FSDP = ["train.parallelism=fsdp"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_data: Path):
    """Uninterrupted runs, one per parallelism, each trained once for the module."""
    root, cache = tmp_path_factory.mktemp("reference"), {}

    def get(parallelism: str) -> dict:
        if parallelism not in cache:
            args = [*BASE, f"data.dir={demo_data}", f"paths.runs={root / parallelism}"]
            if parallelism == "single":
                cache[parallelism] = train(compose_run(args))
            else:
                args.append(f"train.parallelism={parallelism}")
                outcomes = finish(start_ranks(args))
                assert all(code == 0 for code, _ in outcomes), outcomes[0][1][-3000:]
                cache[parallelism] = read_record(run_dir(compose_run(args)))
        return cache[parallelism]

    return get


@pytest.mark.slow
def test_two_fsdp_ranks_match_one_process(reference) -> None:
    single, fsdp = reference("single"), reference("fsdp")
    assert fsdp["status"] == "completed", fsdp["error"]
    assert fsdp["metrics"]["parallelism"] == "fsdp" and fsdp["metrics"]["world_size"] == 2
    assert single["metrics"]["parallelism"] == "single"
    assert fsdp["run_key"] == single["run_key"]  # parallelism is not the run's identity
    assert fsdp["loss"] == pytest.approx(single["loss"], abs=1e-4)
    assert fsdp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)
    # The quantization diagnostics read whole (unsharded) weights.
    assert fsdp["metrics"]["quant"]["sites"].keys() == single["metrics"]["quant"]["sites"].keys()
    # Each record says how it computed; the fit would not pair these two.
    assert single["execution"] == {
        "device_type": "cpu", "world_size": 1, "parallelism": "single", "micro_batch_seqs": 16,
        "compute_dtype": "fp32", "gather_dtype": None, "compiled": False, "autocast": False,
    }  # fmt: skip
    assert fsdp["execution"]["gather_dtype"] == "fp32"
    assert execution_difference(fsdp["execution"], single["execution"]) == (
        "world_size 2 vs 1; parallelism fsdp vs single; micro_batch_seqs 8 vs 16"
    )


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["fsdp", "ddp"])
def test_run_interrupted_by_sigterm_resumes_exactly(
    tmp_path: Path, demo_data: Path, reference, parallelism: str
) -> None:
    args = [*BASE, f"train.parallelism={parallelism}", f"data.dir={demo_data}"]
    args.append(f"paths.runs={tmp_path}")
    record_dir = run_dir(compose_run(args))
    procs = start_ranks(args)
    deadline = time.monotonic() + 180
    while not (record_dir / "metrics.jsonl").exists() or len(train_rows(record_dir)) < 6:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    for p in procs:  # SLURM signals every task of the job
        p.send_signal(signal.SIGTERM)
    outcomes = finish(procs)
    assert [code for code, _ in outcomes] == [143, 143], outcomes[0][1][-3000:]
    stopped_at = train_rows(record_dir)[-1]["step"]
    assert 6 <= stopped_at < 20
    (saved,) = (record_dir / "checkpoint").glob(f"step-{stopped_at:09d}")
    # FSDP: each rank wrote its own shard; DDP: replicated tensors written once, split by rank.
    assert len(list(saved.glob("*.distcp"))) == 2
    outcomes = finish(start_ranks(args))
    assert all(code == 0 for code, _ in outcomes), outcomes[0][1][-3000:]
    assert f"resuming {record_dir.name} at step {stopped_at}" in outcomes[0][1]
    resumed, uninterrupted = read_record(record_dir), reference(parallelism)
    assert resumed["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6)
    assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], abs=1e-6)
    assert [r["step"] for r in train_rows(record_dir)] == list(range(1, 21))


@pytest.mark.slow
def test_activation_checkpointing_changes_memory_not_the_loss(
    tmp_path: Path, demo_data: Path, reference
) -> None:
    args = [*BASE, f"data.dir={demo_data}", f"paths.runs={tmp_path}"]
    record = train(compose_run([*args, "train.activation_checkpointing=true"]))
    assert record["metrics"]["activation_checkpointing"] is True
    assert record["loss"] == pytest.approx(reference("single")["loss"], abs=1e-6)


def test_single_process_refuses_fsdp(tmp_path: Path, demo_data: Path) -> None:
    cfg = compose_run([*BASE, *FSDP, f"data.dir={demo_data}", f"paths.runs={tmp_path}"])
    record = train(cfg)
    assert record["status"] == "failed"
    assert "train.parallelism=fsdp needs several processes" in record["error"]
    assert "allowed: auto, single" in record["error"]


def test_two_node_slurm_environment_composes_one_process_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What task 3 of a 2-node x 2-GPU SLURM job exports for torch.distributed."""
    if not any(Path(d, "scontrol").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("scontrol (SLURM client) is needed to expand the node list")
    # export_slurm_environment writes os.environ itself: register every key it sets with
    # monkeypatch (setenv, then delenv) so none of them leaks into later tests' SLURM jobs.
    exported = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "SUBMITIT_EXECUTOR")  # fmt: skip
    for key in exported:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)  # SUBMITIT_EXECUTOR unset: as under a plain srun
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_NTASKS_PER_NODE": "2",
    }  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    env = export_slurm_environment()
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["LOCAL_RANK"] == "1"
    assert env["LOCAL_WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "gpu07"  # the first node hosts the rendezvous for both
    assert int(env["MASTER_PORT"]) > 1024
