"""Shared fixtures: the private loopback SLURM cluster (tests/slurm_cluster.py).

SLURM tests skip with the reason when the binaries are missing, unless
``QAT_SWEEP_REQUIRE_SLURM=1`` (CI after .ci/system-deps.sh), where a missing SLURM is a failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from qat_sweep.model.presets import CONF_DIR

sys.path.insert(0, str(Path(__file__).parent))

from slurm_cluster import SlurmCluster, missing_binaries, start_cluster


def _require_slurm() -> None:
    """Skip (or, with QAT_SWEEP_REQUIRE_SLURM=1, fail) where the loopback cluster cannot run."""
    missing = missing_binaries()
    reason = None
    if missing:
        reason = f"SLURM binaries missing: {', '.join(missing)} (run .ci/system-deps.sh)"
    elif os.geteuid() != 0:
        reason = "the loopback SLURM cluster runs its daemons as root (SlurmUser=root)"
    if reason and os.environ.get("QAT_SWEEP_REQUIRE_SLURM") == "1":
        pytest.fail(f"QAT_SWEEP_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster per test session; its environment is applied to this process for its life."""
    _require_slurm()
    root = Path(tempfile.mkdtemp(prefix="qat-slurm-"))
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    cluster = start_cluster(root)
    cluster.apply_env()
    try:
        yield cluster
    finally:
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """A second cluster of two slurmd daemons (two node names on this host), only when asked;
    tests point SLURM_CONF at it themselves (monkeypatch) so the session cluster is untouched."""
    _require_slurm()
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="qat-slurm2-")), nodes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small slice of the offline demo corpus (stdlib sources, 512-token BPE), built once."""
    from qat_sweep.data.prepare.corpus import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("data") / "demo", max_bytes=400_000)


@pytest.fixture
def hydra_compose() -> Iterator:
    """Hydra's compose over the packaged conf/, as `@hydra.main` composes a run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):

        def composed(overrides: list[str]) -> DictConfig:
            return compose("train", overrides=list(overrides))

        yield composed
    GlobalHydra.instance().clear()
