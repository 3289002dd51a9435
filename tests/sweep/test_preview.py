"""`launch --dry-run` on a machine with no SLURM and no prepared data: submitit's own sbatch
scripts, per resource shape, beside the runs of each array."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qat_sweep.commands.launch import main as launch_main


def test_launch_dry_run_needs_no_slurm_and_no_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sinfo, sbatch, scontrol
    argv = ["sweep=paper", "launcher=a100-80gb", f"paths.runs={tmp_path / 'runs'}", "--dry-run"]
    assert launch_main(argv) == 0
    out = capsys.readouterr().out
    assert "no SLURM cluster answers here (no sinfo on PATH)" in out and "data 'olmo2'" in out
    assert "would submit 3 job array(s) via sbatch (tasks: 134, 143, 12)" in out
    scripts = out.split("#!/bin/bash")[1:]
    assert len(scripts) == 3
    # array_parallelism (64) bounds the launch: shared out across the three arrays
    assert "at most 64 runs at once (array_parallelism): %26, %26, %12" in out
    assert "#SBATCH --array=0-133%26" in scripts[0] and "#SBATCH --gpus-per-node=4" in scripts[0]
    assert "#SBATCH --nodes=2" in scripts[2] and "#SBATCH --array=0-11%12" in scripts[2]
    for script in scripts:  # time limit, signal before it, requeue, the job's own python
        assert "#SBATCH --time=1440" in script and "#SBATCH --signal=USR2@180" in script
        assert "#SBATCH --requeue" in script and "-m submitit.core._submit" in script
    assert out.count("_lr") == 289  # every run listed beside its array
    assert not (tmp_path / "runs").exists()  # nothing written


def test_launch_dry_run_with_slurm_tools_but_no_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A laptop with SLURM's client tools and no cluster: sinfo and scontrol fail, the preview
    still prints the sbatch scripts; a real launch refuses with sinfo's own words."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("sinfo", "scontrol", "squeue", "sbatch"):
        tool = tools / name
        tool.write_text(
            "#!/bin/sh\necho 'fatal: Could not establish a configuration source' >&2\nexit 1\n"
        )
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{Path(sys.executable).parent}")
    argv = ["sweep=paper", "launcher=a100-80gb", f"paths.runs={tmp_path / 'runs'}"]
    assert launch_main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "no SLURM cluster answers here (sinfo does not answer" in out
    assert out.count("#!/bin/bash") == 3 and not (tmp_path / "runs").exists()
    assert launch_main(argv) == 2
    assert "Could not establish a configuration source" in capsys.readouterr().err
