"""One definition of delta: what a found, failed or missing BF16 twin means for a pair."""

from __future__ import annotations

import math

import pytest

from qat_sweep.delta import twin_gap

BF16_RUN = {"scheme": "bf16", "status": "completed", "loss": 3.0}


def test_a_positive_gap_is_fitted() -> None:
    gap = twin_gap(3.25, BF16_RUN, "b")
    assert (gap.bf16_loss, gap.delta, gap.excluded) == (3.0, 0.25, "")


def test_a_non_positive_gap_keeps_its_delta_but_is_not_fitted() -> None:
    """The fit takes log(delta): a QAT run at or below its twin shows, but stays out."""
    assert twin_gap(2.9, BF16_RUN, "b").delta == pytest.approx(-0.1)
    assert twin_gap(2.9, BF16_RUN, "b").excluded == "non-positive gap -0.1"
    assert twin_gap(3.0, BF16_RUN, "b").excluded == "non-positive gap 0"


@pytest.mark.parametrize(
    "twin",
    [
        None,
        {**BF16_RUN, "status": "failed", "loss": None},
        {**BF16_RUN, "status": "diverged"},
        {**BF16_RUN, "loss": math.nan},
        {**BF16_RUN, "scheme": "w4a4"},
    ],
)
def test_no_usable_twin_gives_no_delta(twin: dict | None) -> None:
    gap = twin_gap(3.25, twin, "bf16-key")
    assert math.isnan(gap.delta) and math.isnan(gap.bf16_loss)
    assert gap.excluded == "no BF16 twin (bf16-key)"
