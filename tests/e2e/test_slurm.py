"""Launching on the private loopback SLURM cluster (tests/slurm_cluster.py): arrays, idempotent
relaunch, preemption and resume, failures, DDP over two fake GPUs, and the sbatch-call count."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from slurm_cluster import wait_for
from support import train_rows

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.status import main as status_main
from qat_sweep.record import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SWEEP = """
overrides: [data=demo, logger=none, train.threads=1]
twins: {twins}
subgrids:
  a:
    model: 0.2M
    tokens: {tokens}
    quant: {quant}
{extra}"""


def sweep_file(tmp_path: Path, name: str, tokens: int = 4096, quant: str = "w4a4", **kw) -> str:
    extra = "" if quant == "bf16" else "    quant.group_size: [16, channel]\n"
    twins = str(kw.get("twins", True)).lower()
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(tokens=tokens, quant=quant, extra=extra, twins=twins))
    return str(path)


def statuses(sweep: str, runs: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list:
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", f"paths.runs={runs}", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def all_done(sweep: str, runs: Path, capsys, *extra: str) -> Callable[[], bool]:
    return lambda: all(
        r["status"] in ("completed", "failed") for r in statuses(sweep, runs, capsys, *extra)
    )


@pytest.fixture
def count_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_cluster) -> Path:
    """Put an sbatch wrapper first on PATH that counts its calls into the returned file."""
    bin_dir, calls = tmp_path / "sbatch-bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    real = shutil.which("sbatch")
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(f'#!/bin/bash\necho "$@" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    calls.touch()
    return calls


def test_array_completes_and_relaunch_submits_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count_sbatch: Path
) -> None:
    sweep, runs = sweep_file(tmp_path, "arr"), tmp_path / "runs"
    argv = [f"sweep={sweep}", "launcher=ci", f"paths.runs={runs}"]
    assert launch_main(argv) == 0
    assert "submitted 3 runs in 1 array(s)" in capsys.readouterr().out
    assert len(count_sbatch.read_text().splitlines()) == 1
    assert launch_main(argv) == 0  # queued or running: nothing to submit
    assert "launching 0" in capsys.readouterr().out
    wait_for(all_done(sweep, runs, capsys), 240, "array of 3 runs finished")
    rows = statuses(sweep, runs, capsys)
    assert [r["status"] for r in rows] == ["completed"] * 3
    for row in rows:
        record = read_record(Path(row["run_dir"]))
        assert record["status"] == "completed" and record["slurm"]["array_job_id"]
    assert launch_main(argv) == 0
    assert "launching 0" in capsys.readouterr().out
    assert len(count_sbatch.read_text().splitlines()) == 1


def test_paper_sweep_needs_a_handful_of_arrays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count_sbatch: Path
) -> None:
    # a corpus not built yet: the demo corpus another test built is far too small for the
    # paper's budgets, which plan refuses once it can count the corpus's tokens
    data = [f"data.dir={tmp_path / 'corpus'}"]
    argv = ["sweep=paper", "launcher=ci", "data=demo", *data, f"paths.runs={tmp_path}", "--dry-run"]
    assert launch_main(argv) == 0
    out = capsys.readouterr().out
    assert "launching 289" in out
    assert "would submit 3 job array(s) via sbatch (tasks: 128, 128, 33)" in out
    assert count_sbatch.read_text() == ""
    # A real submission chunked the same way: 3 runs in arrays of at most 2 -> 2 sbatch calls.
    profile = tmp_path / "chunked.yaml"
    profile.write_text((Path("launchers") / "ci.yaml").read_text() + "max_array_size: 2\n")
    sweep, runs = sweep_file(tmp_path, "chunk"), tmp_path / "runs"
    assert launch_main([f"sweep={sweep}", f"launcher={profile}", f"paths.runs={runs}"]) == 0
    assert "submitted 3 runs in 2 array(s)" in capsys.readouterr().out
    assert len(count_sbatch.read_text().splitlines()) == 2
    wait_for(all_done(sweep, runs, capsys), 240, "chunked arrays finished")


def test_preempted_run_resumes_to_the_same_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slurm_cluster
) -> None:
    sweep = sweep_file(tmp_path, "pre", tokens=2048 * 60, quant="bf16", twins=False)
    preempted, reference = tmp_path / "preempted", tmp_path / "reference"
    for root in (preempted, reference):
        assert launch_main([f"sweep={sweep}", "launcher=ci", f"paths.runs={root}"]) == 0
    (row,) = statuses(sweep, preempted, capsys)
    job_id, run_dir = row["job_id"], Path(row["run_dir"])
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(train_rows(run_dir)) >= 3, 180, "a few logged steps")
    slurm_cluster.run("scontrol", "requeue", job_id)

    def restarted() -> bool:
        state = slurm_cluster.run("squeue", "-h", "-j", job_id, "-o", "%T").strip()
        if state == "PENDING":
            try:  # skip the ~120 s requeue delay; the job may start between the two calls
                slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            except RuntimeError as err:
                if "no longer pending" not in str(err):
                    raise
        return read_record(run_dir) is not None

    wait_for(restarted, 240, "requeued run finished")
    wait_for(all_done(sweep, reference, capsys), 240, "reference run finished")
    resumed, twin = (
        read_record(run_dir),
        read_record(Path(statuses(sweep, reference, capsys)[0]["run_dir"])),
    )
    assert resumed["status"] == twin["status"] == "completed"
    assert int(resumed["slurm"]["restart_count"] or 0) >= 1
    assert resumed["loss"] == pytest.approx(twin["loss"], rel=1e-5, abs=1e-6)


def test_failing_run_is_reported_with_reason_and_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slurm_cluster
) -> None:
    sweep, runs = sweep_file(tmp_path, "bad", quant="bf16", twins=False), tmp_path / "runs"
    # Passes planning, fails in the trainer: the corpus its job builds has 512 tokens (a built
    # corpus would be refused before any job).
    extra, data = "model.vocab_size=8", f"paths.data={tmp_path}/data"
    assert launch_main([f"sweep={sweep}", "launcher=ci", f"paths.runs={runs}", extra, data]) == 0
    wait_for(all_done(sweep, runs, capsys, extra, data), 180, "failing run ended")
    (row,) = statuses(sweep, runs, capsys, extra, data)
    assert row["status"] == "failed" and "vocab" in row["error"]
    assert row["log"] and Path(row["log"]).exists()
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", f"paths.runs={runs}", extra, data]) == 0
    out = capsys.readouterr().out
    assert "failed 1" in out and "failed (1), by reason" in out
    assert status_main([f"sweep={sweep}", f"paths.runs={runs}", extra, data, "--runs"]) == 0
    out = capsys.readouterr().out
    assert row["run_key"] in out and "log: " in out


def test_two_task_fsdp_job_on_fake_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slurm_cluster
) -> None:
    """Two SLURM tasks form one gloo process group from SLURM's variables and shard with FSDP."""
    profile = tmp_path / "two_gpus.yaml"
    text = (
        (Path("launchers") / "ci.yaml").read_text().replace("gpus_per_node: 0", "gpus_per_node: 2")
    )
    profile.write_text(
        text.replace("  - train.threads=1", "  - train.threads=1\n  - train.parallelism=fsdp")
    )
    sweep, runs = sweep_file(tmp_path, "fsdp", quant="bf16", twins=False), tmp_path / "runs"
    assert launch_main([f"sweep={sweep}", f"launcher={profile}", f"paths.runs={runs}"]) == 0
    (row,) = statuses(sweep, runs, capsys)
    script = next(Path(row["log"]).parent.glob("*_submission.sh")).read_text()
    assert "--gpus-per-node=2" in script and "--ntasks-per-node=2" in script
    wait_for(all_done(sweep, runs, capsys), 240, "FSDP run finished")
    record = read_record(Path(row["run_dir"]))
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["world_size"] == 2 and record["metrics"]["parallelism"] == "fsdp"


def test_resources_asking_for_more_nodes_than_the_partition_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count_sbatch: Path
) -> None:
    sweep, runs = sweep_file(tmp_path, "nodes"), tmp_path / "runs"
    profile = tmp_path / "two_nodes.yaml"
    extra = "resources:\n  - models: [0.2M]\n    nodes: 2\n"
    profile.write_text((Path("launchers") / "ci.yaml").read_text() + extra)
    assert launch_main([f"sweep={sweep}", f"launcher={profile}", f"paths.runs={runs}"]) == 2
    err = capsys.readouterr().err
    assert "nodes=2 > 1 nodes in the partition (allowed: 1..1)" in err
    assert count_sbatch.read_text() == "" and not runs.exists()


def test_over_large_profile_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count_sbatch: Path
) -> None:
    sweep, runs = sweep_file(tmp_path, "big"), tmp_path / "runs"
    assert launch_main([f"sweep={sweep}", "launcher=slurm", f"paths.runs={runs}"]) == 2
    err = capsys.readouterr().err
    assert "asks for more than partition 'debug' offers: mem_gb=64" in err
    assert count_sbatch.read_text() == "" and not runs.exists()
    # The Hydra path checks the same profile against the same partition.
    assert launch_main([f"sweep={sweep}", "launcher=slurm", "--print-hydra-overrides"]) == 2
    assert "mem_gb=64" in capsys.readouterr().err
    assert launch_main([f"sweep={sweep}", "launcher=ci", "--print-hydra-overrides"]) == 0
    assert "hydra/launcher=submitit_slurm" in capsys.readouterr().out
    profile = tmp_path / "elsewhere.yaml"
    profile.write_text("kind: slurm\npartition: gpu\n")
    assert launch_main([f"sweep={sweep}", f"launcher={profile}", "--dry-run"]) == 2
    assert "partition 'gpu' does not exist on this cluster; partitions: debug" in (
        capsys.readouterr().err
    )


def test_two_node_job_trains_as_one_process_group(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    slurm_two_nodes,
) -> None:
    """nodes: 2 on two slurmd daemons: one task per node, rendezvous on the first node."""
    for key, value in slurm_two_nodes.env.items():
        monkeypatch.setenv(key, value)
    profile = tmp_path / "two_nodes.yaml"
    text = (Path("launchers") / "ci.yaml").read_text().replace("gpus_per_node: 0", "nodes: 2")
    profile.write_text(text)
    sweep, runs = sweep_file(tmp_path, "nodes2", quant="bf16", twins=False), tmp_path / "runs"
    assert launch_main([f"sweep={sweep}", f"launcher={profile}", f"paths.runs={runs}"]) == 0
    (row,) = statuses(sweep, runs, capsys)
    script = next(Path(row["log"]).parent.glob("*_submission.sh")).read_text()
    assert "--nodes=2" in script
    wait_for(all_done(sweep, runs, capsys), 240, "two-node run finished")
    record = read_record(Path(row["run_dir"]))
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["world_size"] == 2 and record["slurm"]["ntasks"] == "2"
    nodelist = slurm_two_nodes.run("scontrol", "show", "hostnames", record["slurm"]["job_nodelist"])
    assert len(nodelist.split()) == 2  # both slurmd daemons ran a task


BRANCHING = """
overrides: [data=demo, logger=none, train.threads=1]
subgrids:
  late:
    model: 0.2M
    tokens: 40960
    quant: w4a4
    quant.group_size: 32
    quant.start_fraction: 0.5
"""


def all_parents_failed(sweep: str, runs: Path, capsys, *extra: str) -> Callable[[], bool]:
    rows = lambda: statuses(sweep, runs, capsys, *extra)  # noqa: E731
    return lambda: all(r["status"] == "failed" for r in rows() if not r["parent"])


def test_child_waits_held_until_its_parent_keeps_the_branch_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slurm_cluster
) -> None:
    """QAT after BF16 on SLURM: the child is queued held; the BF16 twin's trainer releases it
    once its step-10 checkpoint is kept, long before the twin ends; a failed parent leaves its
    child held in the queue, with that reason."""
    (tmp_path / "late.yaml").write_text(BRANCHING)
    sweep = str(tmp_path / "late.yaml")
    assert (
        launch_main([f"sweep={sweep}", "launcher=ci", f"paths.runs={tmp_path}", "--dry-run"]) == 0
    )
    preview = capsys.readouterr().out  # the parent's array, then the child's, queued held
    assert "would submit 2 job array(s)" in preview and preview.count("#SBATCH --hold") == 1
    # The failing parent's vocabulary is smaller than that of the corpus its job builds.
    bad = ["model.vocab_size=8", f"paths.data={tmp_path}/bad-data"]
    good = [f"paths.data={tmp_path}/data"]  # each corpus built by the first job that needs it
    for runs, extra in ((tmp_path / "runs", good), (tmp_path / "bad", bad)):
        argv = [f"sweep={sweep}", "launcher=ci", f"paths.runs={runs}", *extra]
        assert launch_main(argv) == 0
        assert "in 2 array(s)" in capsys.readouterr().out  # parents, then held children
        child = next(r for r in statuses(sweep, runs, capsys, *extra) if r["parent"])
        assert child["status"] == "running" and child["job_state"] == "pending"
    runs = tmp_path / "runs"
    wait_for(all_done(sweep, runs, capsys, *good), 240, "parent and child finished")
    child = next(r for r in statuses(sweep, runs, capsys, *good) if r["parent"])
    assert child["status"] == "completed" and child["branch_step"] == 10
    record = read_record(Path(child["run_dir"]))
    assert record["metrics"]["branched_from"] == {"parent": child["parent"], "step": 10}
    # The failed parent holds its child back in the queue; a relaunch reruns only the parent.
    wait_for(all_parents_failed(sweep, tmp_path / "bad", capsys, *bad), 180, "parent failed")
    held = next(r for r in statuses(sweep, tmp_path / "bad", capsys, *bad) if r["parent"])
    assert held["job_state"] == "pending"
    assert held["reason"].startswith(f"held back: parent {held['parent']} failed before step 10")
    assert held["status"] == "running"  # queued: a relaunch resubmits the parent, not the child
    slurm_cluster.run("scancel", held["job_id"])
