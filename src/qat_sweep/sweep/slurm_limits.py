"""What a SLURM partition offers a job, read from ``sinfo`` and ``scontrol`` (profiles.py checks
a launch profile against it before anything is submitted)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionLimits:
    """What one node of a partition offers a job (None: unlimited or unknown)."""

    name: str
    cpus: int
    mem_gb: float
    gpus: int
    max_time_min: int | None
    nodes: int


class SchedulerUnreachable(ValueError):
    """A SLURM command that did not answer (no cluster configured, controller down)."""


def slurm_output(*args: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SchedulerUnreachable(
            f"`{' '.join(args)}` could not run: {e}{_slurm_conf_hint()}"
        ) from e
    if out.returncode:
        raise SchedulerUnreachable(
            f"`{' '.join(args)}` failed: {out.stderr.strip() or out.stdout.strip()}"
            f"{_slurm_conf_hint()}"
        )
    return out.stdout


def _slurm_conf_hint() -> str:
    if os.environ.get("SLURM_CONF"):
        return f" (SLURM_CONF={os.environ['SLURM_CONF']}: is that cluster up?)"
    return (
        "; SLURM_CONF is not set, so SLURM looked for /etc/slurm/slurm.conf and then DNS SRV "
        "records: export SLURM_CONF=/path/to/slurm.conf (for the loopback test cluster: "
        "`make cluster-up`, see README)"
    )


def partition_limits(partition: str | None) -> PartitionLimits:
    """Per-node limits of ``partition`` (or the default one) from ``sinfo``."""
    fmt = "%P|%c|%m|%G|%l|%D"
    rows = [r.split("|") for r in slurm_output("sinfo", "-h", "-o", fmt).splitlines() if r]
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")] or rows[:1]
    else:
        rows = [r for r in rows if r[0].rstrip("*") == partition]
    if not rows:
        names = {name.rstrip("*") for name in slurm_output("sinfo", "-h", "-o", "%P").split()}
        raise ValueError(
            f"partition {partition!r} does not exist on this cluster; "
            f"partitions: {', '.join(sorted(names))}"
        )
    return PartitionLimits(
        name=rows[0][0].rstrip("*"),
        cpus=max(int(r[1].rstrip("+")) for r in rows),
        mem_gb=max(int(r[2].rstrip("+")) for r in rows) / 1024,
        gpus=max(_gpu_count(r[3]) for r in rows),
        max_time_min=_minutes(rows[0][4]),
        nodes=sum(int(r[5]) for r in rows),
    )


def _gpu_count(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
        if match:
            total = max(total, int(match.group(1)))
    return total


def _minutes(limit: str) -> int | None:
    """sinfo time limit ('infinite', 'D-HH:MM:SS', 'HH:MM:SS', 'MM:SS', 'MM') in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        hours, minutes = 0, parts[0]
    else:
        parts = ([0] * 3 + parts)[-3:]
        hours, minutes = parts[0], parts[1] + (parts[2] > 0)
    return (int(days) if days else 0) * 1440 + hours * 60 + minutes
