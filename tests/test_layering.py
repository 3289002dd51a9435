"""The layering of docs/architecture.md holds: import-linter's contracts (pyproject.toml) pass on
the package, and they catch what they are there to catch (an upward import, a lazy circle)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        capture_output=True,
        text=True,
        env={"QAT_SWEEP_ROOT": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_package_keeps_its_import_contracts() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for part in ("src", "analysis"):
        shutil.copytree(
            ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_lazy_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n\ndef _injected() -> None:\n    {statement}\n")


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # the model floor reaching up to the sweep library, inside a function
        ("src/qat_sweep/model/presets.py", "from qat_sweep.sweep import plan  # noqa", "Layers"),
        # the trainer reading the analysis
        ("src/qat_sweep/train/trainer.py", "import qat_sweep.analysis.collect  # noqa", "Layers"),
        # floor 1 importing a subsystem
        ("src/qat_sweep/record.py", "from qat_sweep.config import compose  # noqa", "Floor 1"),
        # a circle inside one folder: sizing imports profiles, profiles lazily imports sizing
        ("src/qat_sweep/sweep/profiles.py", "from qat_sweep.sweep import sizing  # noqa", "circle"),
    ],
)
def test_the_contracts_catch_a_lazy_import_that_breaks_them(
    tree: Path, module: str, statement: str, broken: str
) -> None:
    add_lazy_import(tree / module, statement)
    proc = lint(tree)
    assert proc.returncode != 0, proc.stdout
    verdicts = " ".join(proc.stdout.split())  # contract names wrap at 80 columns
    assert re.search(rf"{broken}[^.]*? BROKEN", verdicts), proc.stdout
