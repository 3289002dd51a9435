"""Delta, the quantity the law fits: a quantized run's loss minus its BF16 twin's.

One definition, with the reasons a pair stays out of the fit, for the fit's table
(`analysis/collect.py pair_deltas`) and the wandb summary (`train/tracking.py final_summary`),
so a dashboard never shows a delta the fit treats differently. Finding the twin is each
caller's business (a table row by twin_key or by its cells, a record by its twin_key); what a
found or missing twin means is decided here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BF16 = "bf16"  # the twin's scheme: the unquantized reference


@dataclass(frozen=True)
class TwinGap:
    """A quantized run against its BF16 twin."""

    bf16_loss: float  # the twin's loss; NaN without a usable twin
    delta: float  # loss - bf16_loss; NaN without a usable twin
    excluded: str  # why the fit leaves the pair out; "" when it fits it


def usable_twin(twin: Mapping[str, Any]) -> bool:
    """A BF16 run that completed with a finite loss: a failed twin gives no reference loss."""
    if twin.get("scheme") != BF16 or twin.get("status") != "completed":
        return False
    loss = twin.get("loss")
    return isinstance(loss, int | float) and math.isfinite(loss)


def twin_gap(loss: float, twin: Mapping[str, Any] | None, twin_name: str) -> TwinGap:
    """Delta of a quantized run with `loss` against `twin` (None: none found).

    `twin_name` says which twin was looked for, in the reason. The fit takes only positive
    gaps, as it fits log(delta); the delta itself is kept so a report can show it.
    """
    if twin is None or not usable_twin(twin):
        return TwinGap(math.nan, math.nan, f"no BF16 twin ({twin_name})")
    bf16_loss = float(twin["loss"])
    delta = float(loss) - bf16_loss
    return TwinGap(bf16_loss, delta, "" if delta > 0 else f"non-positive gap {delta:.4g}")
