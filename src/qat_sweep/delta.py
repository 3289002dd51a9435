"""Delta, the quantity the law fits: a quantized run's loss minus its BF16 twin's.

One definition, with the reasons a pair stays out of the fit, for the fit's table
(`analysis/collect.py pair_deltas`) and the wandb summary (`train/tracking.py final_summary`),
so a dashboard never shows a delta the fit treats differently. Finding the twin is each
caller's business (a table row by twin_key or by its cells, a record by its twin_key); what a
found or missing twin means is decided here, and so is what "computed alike" means: a pair
whose executions differ (a record's `execution`) would carry a difference of numerics, which
4-bit codes amplify, besides quantization.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BF16 = "bf16"  # the twin's scheme: the unquantized reference
# A record's `execution`: how the run computed. A run and its BF16 twin must agree on each.
EXECUTION_FIELDS = (
    "device_type",  # cuda | cpu
    "world_size",  # ranks
    "parallelism",  # single | ddp | fsdp
    "micro_batch_seqs",  # per rank: the gradient-accumulation split
    "compute_dtype",  # bf16 (autocast matmuls over fp32 parameters) | fp32
    "gather_dtype",  # FSDP's parameter gathers; null without FSDP
    "compiled",  # torch.compile'd blocks
    "autocast",  # bf16 autocast on
)


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


def _same(a: Any, b: Any) -> bool:
    """Equal settings, whether read from JSON or back from a CSV (2 and 2.0, True and 'true')."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a).lower() == str(b).lower()


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _known(value: Any) -> bool:
    return value is not None and value == value and value != ""  # not None, NaN or empty


def execution_difference(run: Mapping[str, Any] | None, twin: Mapping[str, Any] | None) -> str:
    """How two executions differ ("" when alike); a field either lacks is not compared, so
    records written before they carried `execution` still pair."""
    run, twin = run or {}, twin or {}
    return "; ".join(
        f"{name} {_show(run[name])} vs {_show(twin[name])}"
        for name in EXECUTION_FIELDS
        if _known(run.get(name)) and _known(twin.get(name)) and not _same(run[name], twin[name])
    )


def twin_gap(
    loss: float,
    twin: Mapping[str, Any] | None,
    twin_name: str,
    execution: Mapping[str, Any] | None = None,
) -> TwinGap:
    """Delta of a quantized run with `loss` and `execution` against `twin` (None: none found),
    whose `execution` must match.

    `twin_name` says which twin was looked for, in the reason. The fit takes only positive
    gaps, as it fits log(delta); the delta itself is kept so a report can show it.
    """
    if twin is None or not usable_twin(twin):
        return TwinGap(math.nan, math.nan, f"no BF16 twin ({twin_name})")
    bf16_loss = float(twin["loss"])
    delta = float(loss) - bf16_loss
    if differs := execution_difference(execution, twin.get("execution")):
        return TwinGap(bf16_loss, delta, f"executed otherwise than its BF16 twin: {differs}")
    return TwinGap(bf16_loss, delta, "" if delta > 0 else f"non-positive gap {delta:.4g}")
