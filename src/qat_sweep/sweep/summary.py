"""The screens of `plan` and `status`: where a sweep's runs and GPU-hours go, per model and per
sub-grid, in tables that fit a 100-column terminal. The per-run tables are `--runs`'s."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qat_sweep.common import format_count, format_hours
from qat_sweep.sweep.jobs import STATUSES
from qat_sweep.sweep.spec import PlannedRun

WIDTH = 100  # every summary line fits a terminal this wide
# numbers that differ from run to run (steps, losses, job ids), but not an exit code
_VARYING = re.compile(r"(?<!code )(?<!exit )(?<![A-Za-z\d.])\d+(\.\d+)?")


def clip(line: str, width: int = WIDTH) -> str:
    """One line of at most ``width`` characters (a cut line ends in '...')."""
    return line if len(line) <= width else line[: width - 3] + "..."


def wrap(text: str, indent: str = "") -> list[str]:
    """A note broken into lines of at most WIDTH characters."""
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)


@dataclass(frozen=True)
class Column:
    """One column of a summary table: its title, width and cell text for a group of runs."""

    title: str
    width: int
    cell: Callable[[list[PlannedRun]], str]
    left: bool = False

    def fmt(self, text: str) -> str:
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"


def grouped_table(
    runs: list[PlannedRun], key: Callable[[PlannedRun], str], columns: list[Column], title: str
) -> list[str]:
    """A table with one row per value of ``key`` (in order of first appearance) and a first
    column naming it."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    first = max(len(title), *(len(name) for name in groups))
    rows = [[f"{title:<{first}}", *(c.fmt(c.title) for c in columns)]]
    rows += [
        [f"{name:<{first}}", *(c.fmt(c.cell(group)) for c in columns)]
        for name, group in groups.items()
    ]
    return [clip(" ".join(row).rstrip()) for row in rows]


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


def counts_line(runs: Iterable[PlannedRun]) -> str:
    """'completed 12, running 3, missing 4' in STATUSES order, zero counts left out."""
    statuses = [r.status for r in runs]
    return ", ".join(f"{s} {statuses.count(s)}" for s in STATUSES if s in statuses)


def token_values(runs: list[PlannedRun]) -> str:
    """The token budgets of a group of runs: '10B 20B 50B 100B', or '1M..20B (6)' when more."""
    values = sorted({r.tokens for r in runs})
    if len(values) <= 4:
        return " ".join(format_count(v, 3) for v in values)
    return f"{format_count(values[0], 3)}..{format_count(values[-1], 3)} ({len(values)})"


def hours_cell(hours: Callable[[PlannedRun], float]) -> Callable[[list[PlannedRun]], str]:
    return lambda group: format_hours(sum(hours(r) for r in group))


def reason_groups(runs: list[PlannedRun], text: Callable[[PlannedRun], str | None]) -> list[str]:
    """Runs grouped by their reason, most frequent first, one line each: '  12x reason'.

    A reason is its first line (a failure's traceback stays in its log); reasons that differ
    only in numbers (a step, a loss, a job id; not an exit code) are one group, shown by their
    first example."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        reason = ((text(run) or "").strip().splitlines() or ["no reason given"])[0]
        groups.setdefault(_VARYING.sub("#", reason), []).append(reason)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return [clip(f"  {len(reasons):>3}x {reasons[0]}") for reasons in ordered]
