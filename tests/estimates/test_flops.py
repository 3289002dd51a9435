"""The FLOP counts, GPU peaks and GPU-hours of estimates/flops (bench tests the MFU path)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qat_sweep.estimates.flops import (
    DEFAULT_PEAK_TFLOPS,
    PEAK_BF16_TFLOPS,
    gpu_hours,
    paper_flops,
    run_flops,
)


def test_paper_flops_and_gpu_hours() -> None:
    """6ND is the paper's count; GPU-hours of any count at mfu x peak (TFLOP/s)."""
    assert paper_flops(74e6, 10e9) == 6 * 74e6 * 10e9
    assert gpu_hours(3600 * 0.5 * 100e12, 0.5, 100.0) == pytest.approx(1.0)
    assert run_flops(10.0, 3.0, activation_checkpointing=True) == pytest.approx(40.0)
    assert DEFAULT_PEAK_TFLOPS in PEAK_BF16_TFLOPS.values()


def test_flops_module_imports_without_torch() -> None:
    """plan and the analysis import the FLOP counts and peaks: torch stays out of them."""
    code = "import sys, qat_sweep.estimates.flops; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
