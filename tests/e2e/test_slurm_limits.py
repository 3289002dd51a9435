"""A shared cluster's limits, on the private loopback SLURM cluster: a stalled squeue never
doubles a sweep, one concurrency limit spans a launch's arrays, a profile beyond the cluster is
refused before sbatch, and an sbatch refusal is a clean error that leaves no files behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import stand_in

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.status import main as status_main
from qat_sweep.record import SUBMITIT_DIR, launches_dir
from qat_sweep.sweep import jobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SWEEP = """overrides: [data=demo, logger=none, train.threads=1]
twins: true
subgrids:
  a: {model: 0.2M, tokens: 4096, quant: w4a4, quant.group_size: [16, channel]}
"""  # 3 runs: two quantized and their BF16 twin


@pytest.fixture
def launch(tmp_path: Path, slurm_cluster, monkeypatch: pytest.MonkeyPatch):
    """Launch the 3-run sweep under ci.yaml plus ``extra`` profile lines; sbatch calls are
    counted (support.stand_in in front of the real sbatch) and every job is cancelled after."""
    bin_dir, real_sbatch = tmp_path / "bin", shutil.which("sbatch")
    sbatch = stand_in(bin_dir, "sbatch", f'exec {real_sbatch} "$@"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep, runs = tmp_path / "limits.yaml", tmp_path / "runs"
    sweep.write_text(SWEEP)

    def run(extra: str = "", *flags: str) -> int:
        """ci.yaml with the keys of ``extra`` (profile lines) replaced."""
        keys = {line.split(":")[0] for line in extra.splitlines()}
        base = (Path("launchers") / "ci.yaml").read_text().splitlines(keepends=True)
        profile = tmp_path / "profile.yaml"
        profile.write_text("".join(ln for ln in base if ln.split(":")[0] not in keys) + extra)
        return launch_main([f"sweep={sweep}", f"launcher={profile}", f"paths.runs={runs}", *flags])

    run.sbatch_calls = lambda: sbatch.read_text().splitlines()  # type: ignore[attr-defined]
    run.sweep, run.runs, run.bin_dir = sweep, runs, bin_dir  # type: ignore[attr-defined]
    run.real_sbatch = real_sbatch  # type: ignore[attr-defined]
    yield run
    for manifest in launches_dir(runs / "limits").glob("*.json"):
        for array in json.loads(manifest.read_text())["arrays"]:
            slurm_cluster.run("scancel", array)


def submitted_scripts(runs: Path) -> list[str]:
    return [p.read_text() for p in sorted((runs / "limits" / SUBMITIT_DIR).glob("*/*.sh"))]


def test_a_stalled_squeue_is_unknown_and_launch_submits_nothing(
    launch, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert launch() == 0 and len(launch.sbatch_calls()) == 1
    monkeypatch.setattr(jobs, "QUERY_RETRY_DELAYS_S", (0.1, 0.2))
    timeout = "slurm_load_jobs error: Socket timed out on send/recv operation"
    squeue = stand_in(launch.bin_dir, "squeue", f"echo 'squeue: error: {timeout}' >&2; exit 1")
    capsys.readouterr()
    argv = [f"sweep={launch.sweep}", f"paths.runs={launch.runs}", "--json"]
    assert status_main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["unknown"] * 3
    assert launch() == 75
    err = capsys.readouterr().err
    assert "cannot tell which runs are queued" in err and "submitting nothing" in err
    assert len(launch.sbatch_calls()) == 1  # no second array: the sweep is not doubled
    # one try and two retries per look: status looks once, launch once (while planning)
    assert len(squeue.read_text().splitlines()) == 2 * 3
    squeue.with_name("squeue").unlink()  # the controller answers again
    assert launch() == 0 and "launching 0" in capsys.readouterr().out


def test_one_concurrency_limit_spans_the_arrays_of_a_launch(
    launch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 3 runs in arrays of at most 2, one run at a time across the launch: array 2 waits for 1
    assert launch("max_array_size: 2\narray_parallelism: 1\n", "--dry-run") == 0
    assert "at most 1 runs at once (array_parallelism): %1, %1 after array 1" in (
        capsys.readouterr().out
    )
    assert launch("max_array_size: 2\narray_parallelism: 1\n") == 0
    first, second = submitted_scripts(launch.runs)
    assert "#SBATCH --array=0-1%1" in first and "--dependency" not in first
    (manifest,) = launches_dir(launch.runs / "limits").glob("*.json")
    array_id = json.loads(manifest.read_text())["arrays"][0]
    assert f"#SBATCH --dependency=afterany:{array_id}" in second


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ("max_array_size: 1000\n", "max_array_size=1000 > the cluster's MaxArraySize 128"),
        ("signal_delay_s: 1800\n", "signal_delay_s=1800 >= timeout_min x 60 = 1800 s"),
        ("mem_gb: 0.0001\n", "mem_gb=0.0001 is 0.102 MB per node, below the 0.5 GB"),
    ],
)
def test_a_profile_beyond_the_cluster_is_refused_before_sbatch(
    launch, extra: str, refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launch(extra) == 2
    err = capsys.readouterr().err
    assert refusal in err and "Traceback" not in err
    assert launch.sbatch_calls() == [] and not launch.runs.exists()


def test_memory_goes_to_sbatch_in_megabytes(launch) -> None:
    assert launch("mem_gb: 1.5\n") == 0
    assert all("#SBATCH --mem=1536M" in script for script in submitted_scripts(launch.runs))


def test_an_sbatch_refusal_is_a_clean_error_with_no_files_left(
    launch, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = "sbatch: error: Batch job submission failed: Invalid qos specification"
    calls = launch.bin_dir / "sbatch.calls"
    body = f'[ $(wc -l < {calls}) -gt 1 ] && {{ echo "{refusal}" >&2; exit 1; }}\n'
    stand_in(launch.bin_dir, "sbatch", body + f'exec {launch.real_sbatch} "$@"')
    # the first array is queued, the second refused
    assert launch("max_array_size: 2\n") == 1
    err = capsys.readouterr().err
    assert "error: sbatch refused array 2 of 2 (1 runs): " in err and "Invalid qos" in err
    assert "arrays already queued: " in err and "Traceback" not in err
    (manifest,) = launches_dir(launch.runs / "limits").glob("*.json")
    assert len(json.loads(manifest.read_text())["jobs"]) == 2  # the queued array's runs
    folder = launch.runs / "limits" / SUBMITIT_DIR
    # no pickles, no sbatch script: only the queued array's folder (and submitit's link to it)
    assert [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()] == []
