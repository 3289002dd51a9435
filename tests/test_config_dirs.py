"""Configs without editing the package: a non-editable install into a fresh venv finds its own
configs (package data) and a researcher's conf/ and launchers/ in the working directory, or in
--config-dir, add to them; a user's file of the same name wins, and `plan` names the file."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
USER_PRESET = """name: tiny
n_layers: 2
hidden_size: 32
ffn_size: 64
n_heads: 2
n_kv_heads: 1
vocab_size: null
seq_len: 64
batch_seqs: 8
lr: 2.0e-3
warmup_steps: 5
rope_theta: 500000.0
norm_eps: 1.0e-5
"""
USER_SWEEP = """overrides: [data=demo, logger=none]
twins: false
subgrids:
  mine: {model: [tiny, 0.2M], tokens: 8192, quant: w4a4, quant.group_size: 16}
"""
SHADOW_DEMO = (
    "overrides: [data=demo]\ntwins: false\nsubgrids: {only: {model: 0.2M, tokens: 4096}}\n"
)
USER_PROFILE = "kind: local\nmax_parallel: 1\noverrides: [train.threads=1]\n"


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A venv with the project's wheel installed (no editable link); dependencies are reused
    from this venv's site-packages through a .pth line (its own .pth files stay unprocessed, so
    this checkout's editable qat_sweep is invisible there). Returns (python, site-packages)."""
    root = tmp_path_factory.mktemp("fresh")
    wheel_dir = root / "wheel"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # This venv's setuptools builds it offline; a venv without one (Python >= 3.12) lets pip
    # fetch the build backend as usual.
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run(
        [*pip, "wheel", "--no-deps", *offline, str(REPO), "-w", str(wheel_dir)],
        check=True,
        capture_output=True,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (wheel,) = wheel_dir.glob("qat_sweep-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", purelib, str(wheel)],
        check=True,
        capture_output=True,
    )
    deps = (
        sysconfig.get_paths()["purelib"]
        if sys.prefix != sys.base_prefix
        else site.getsitepackages()[0]
    )
    (Path(purelib) / "_deps_from_dev_venv.pth").write_text(deps + "\n")
    return python, Path(purelib)


def clean_env() -> dict[str, str]:
    """Nothing of this checkout: no PYTHONPATH, no config-directory variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAT_SWEEP_")}
    return {**env, "PYTHONPATH": ""}


def qat(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "qat_sweep.cli", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_installed_package_plans_paper_and_user_configs(
    fresh_python: tuple[Path, Path], tmp_path: Path
) -> None:
    python, purelib = fresh_python
    where = subprocess.run(
        [str(python), "-c", "import qat_sweep; print(qat_sweep.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(purelib)), "the wheel, not this checkout, must be imported"

    empty = tmp_path / "empty"
    empty.mkdir()
    out = qat(python, empty, "plan", "sweep=paper")
    assert out.returncode == 0, out.stderr
    assert "289 runs (268 quantized + 21 BF16)" in out.stdout
    assert f"from {purelib / 'qat_sweep' / 'conf' / 'sweep' / 'paper.yaml'}" in out.stdout

    project = tmp_path / "project"
    (project / "conf" / "sweep").mkdir(parents=True)
    (project / "conf" / "model").mkdir()
    (project / "launchers").mkdir()
    (project / "conf" / "sweep" / "mine.yaml").write_text(USER_SWEEP)
    (project / "conf" / "sweep" / "demo.yaml").write_text(SHADOW_DEMO)
    (project / "conf" / "model" / "tiny.yaml").write_text(USER_PRESET)
    (project / "launchers" / "mine.yaml").write_text(USER_PROFILE)

    out = qat(python, project, "plan", "sweep=mine", "launcher=mine", "--runs")
    assert out.returncode == 0, out.stderr
    assert "sweep 'mine' from conf/sweep/mine.yaml" in out.stdout  # shown relative to cwd
    assert "launch profile 'mine' from launchers/mine.yaml" in out.stdout
    assert "tiny_D8.192K_w4a4_int4_g16" in out.stdout  # the user's preset
    assert "0.2M_D8.192K_w4a4_int4_g16" in out.stdout  # a packaged one beside it
    out = qat(python, project, "plan", "sweep=demo")  # the user's demo.yaml shadows ours
    assert out.returncode == 0 and "1 runs (" in out.stdout, out.stderr
    out = qat(python, empty, "--config-dir=" + str(project), "plan", "sweep=mine", "--runs")
    assert out.returncode == 0 and "tiny_D8.192K" in out.stdout, out.stderr

    # The Hydra app sees the same search path: the user's preset, the packaged quant group.
    out = qat(python, project, "train", "model=tiny", "quant=w4a4", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "name: tiny" in out.stdout and "scheme: w4a4" in out.stdout
