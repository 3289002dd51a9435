"""The tree of a sweep's runs that branch: which run starts from which run's checkpoint.

Two protocols share one mechanism (a run starts from its parent's checkpoint at a step, and
computes exactly what it would from scratch):

* QAT after BF16 (``quant.start_fraction > 0``): the run is its BF16 twin until its first
  quantized step, so it starts from the twin's checkpoint there (or from the twin's own parent
  when the twin itself branches later than that).
* WSD trunks (``branch: tokens`` on a sub-grid): runs that differ only in D share their
  stable phase; one trunk per group trains it (a WSD run that decays nowhere, to the last
  decay start) and each D decays from the trunk's checkpoint at its own decay start.

Parents get ``checkpoint.branch_steps`` (kept whole), children ``branch.parent`` and
``branch.step``: execution keys, so no run_key changes. ``branch_problems`` refuses a branch
whose child would not compute its from-scratch result.

Launching: parents go first (``parents_first``). Locally a child waits for its branch
checkpoint (``BranchGate``). On SLURM a child is queued held (``sbatch --hold``) and the
parent's trainer runs ``scontrol release`` on it right after keeping the checkpoint
(``hold_for_parents`` notes the job ids beside it). We chose this over ``afterok``
dependencies: a dependency waits for the whole parent job, so a QAT-after-BF16 child would
wait for its twin's last step instead of its first quantized one; and a failed parent leaves
a dependent job pending forever (DependencyNeverSatisfied) where the held job is simply
released by the rerun parent. A held child costs no GPU time while it waits, and a failed
parent keeps it held (squeue shows it pending, JobHeldUser).
"""

from __future__ import annotations

import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from qat_sweep.common import write_atomic
from qat_sweep.config.compose import hydra_value, plan_config, run_key, twin_key
from qat_sweep.config.steps import RunSteps, run_steps
from qat_sweep.record import branch_checkpoint_path, branch_release_path, read_record
from qat_sweep.sweep.profiles import LaunchProfile
from qat_sweep.sweep.spec import PlannedRun, override_value, planned_run

BRANCH_OPTIONS = ("tokens",)  # what `branch:` on a sub-grid may say
TRUNK_SUBGRID = "trunks"
# Optim keys a trunk sets apart from its branches: a flat schedule, and their warm-up.
_SCHEDULE_TAIL = ("decay_fraction", "warmup_steps", "warmup_max_fraction")
# Keys plan derives: a sweep file that sets them is refused.
DERIVED_KEYS = ("branch", "branch.parent", "branch.step", "checkpoint.branch_steps")

Problems = dict[str, list[str]]  # one sentence -> the runs it names (plan's problem report)
Links = dict[str, tuple[str, int]]  # child run_key -> (parent run_key, branch step)


def plan_branches(
    runs: list[PlannedRun], branched: tuple[str, ...]
) -> tuple[list[PlannedRun], Problems]:
    """The trunks of the ``branched`` sub-grids and every run's parent, set on the runs;
    returns the trunks to add and the problems (then nothing is changed)."""
    problems: Problems = {}
    trunks, links = _trunks(runs, branched, problems)
    by_key = {r.run_key: r for r in [*runs, *trunks]}
    for run in runs:
        start = run_steps(run.config).quant_start
        parent = _qat_parent(run, start, by_key, links) if start > 0 else None
        if parent is not None:
            links[run.run_key] = (parent, start)
    for child, (parent, step) in links.items():
        for problem in branch_problems(by_key[child].config, by_key[parent].config, step):
            problems.setdefault(problem, []).append(_label(by_key[child]))
    for problem in cycle_problems(links):
        problems.setdefault(problem, [])
    if problems:
        return [], problems
    _link(by_key, links)
    return trunks, problems


def _label(run: PlannedRun) -> str:
    return f"{run.subgrid} {run.run_key}"


def _trunks(
    runs: list[PlannedRun], branched: tuple[str, ...], problems: Problems
) -> tuple[list[PlannedRun], Links]:
    """One trunk per group of runs that differ only in D: the branched sub-grids' runs and
    their BF16 twins (which branch alike from a BF16 trunk)."""
    members = {r.run_key for r in runs if r.subgrid in branched}
    members |= {twin_key(r.config) for r in runs if r.subgrid in branched and r.scheme != "bf16"}
    groups: dict[str, list[PlannedRun]] = defaultdict(list)
    for run in runs:
        if run.run_key in members:
            groups[run_key({**run.config, "tokens": 1})].append(run)  # all but D
    trunks: list[PlannedRun] = []
    links: Links = {}
    for group in groups.values():
        steps = {r.run_key: run_steps(r.config) for r in group}
        trunk = _trunk(group, steps, problems)
        if trunk is not None:
            trunks.append(trunk)
            links |= {
                r.run_key: (trunk.run_key, int(steps[r.run_key].decay_start or 0)) for r in group
            }
    return trunks, links


def _trunk(
    group: list[PlannedRun], steps: dict[str, RunSteps], problems: Problems
) -> PlannedRun | None:
    """The trunk of one group, or None with the problem recorded."""
    cosine = [_label(r) for r in group if steps[r.run_key].decay_start is None]
    if cosine:
        problems.setdefault(
            "branch: tokens branches each D's decay off a constant-LR trunk, so its runs need "
            "a WSD schedule (optim=adamw_wsd); these decay by cosine",
            [],
        ).extend(cosine)
        return None
    started = [_label(r) for r in group if r.start_fraction]
    if started:
        problems.setdefault(
            "branch: tokens takes quant.start_fraction=0: a trunk cannot start quantizing at "
            "each D's own step; use a sub-grid without branch: tokens",
            [],
        ).extend(started)
        return None
    warmups = sorted({s.warmup for s in steps.values()})
    if len(warmups) > 1:
        problems.setdefault(
            f"branch: tokens needs one warm-up for every D of a group; these runs warm up for "
            f"{warmups} steps (optim.warmup_steps, capped at optim.warmup_max_fraction of each "
            f"run's steps): set optim.warmup_steps to at most {warmups[0]}",
            [],
        ).extend(_label(r) for r in group)
        return None
    longest = max(group, key=lambda r: steps[r.run_key].total)
    last = max(s.decay_start or 0 for s in steps.values())
    overrides = _with(
        longest.overrides,
        {
            "tokens": last * steps[longest.run_key].tokens_per_step,
            "optim.decay_fraction": 0.0,  # decays nowhere
            "optim.warmup_steps": warmups[0],
            "optim.warmup_max_fraction": 1.0,  # the branches' warm-up, uncapped
        },
    )
    return planned_run(TRUNK_SUBGRID, overrides, plan_config(overrides))


def _with(overrides: list[str], values: dict[str, Any]) -> list[str]:
    """``overrides`` with ``values`` set (earlier settings of those keys dropped)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in values]
    return [*kept, *(f"{k}={override_value(v)}" for k, v in values.items())]


def _qat_parent(
    run: PlannedRun, step: int, by_key: dict[str, PlannedRun], links: Links
) -> str | None:
    """The run a QAT-after-BF16 run starts from: its BF16 twin, or the twin's own parent when
    the twin starts there at or after ``step``; None without a twin in the sweep."""
    parent = by_key.get(twin_key(run.config))
    while parent is not None and parent.run_key in links and step <= links[parent.run_key][1]:
        parent = by_key[links[parent.run_key][0]]
    return None if parent is None else parent.run_key


def branch_problems(child: dict[str, Any], parent: dict[str, Any], step: int) -> list[str]:
    """Why ``child`` (a resolved config) starting from ``parent``'s checkpoint at ``step``
    would not compute what it computes from scratch; each names the parent and the values."""
    c, p, name = run_steps(child), run_steps(parent), parent["run_key"]
    problems = []
    if not 1 <= step <= min(p.total, c.total):
        problems.append(
            f"branch step {step} is outside the steps of its parent {name} (1..{p.total}) or "
            f"of the run (1..{c.total})"
        )
    if c.warmup != p.warmup:
        problems.append(
            f"warm-up of {c.warmup} steps differs from its parent {name}'s {p.warmup} steps"
        )
    if c.decay_start is None and (p.decay_start is not None or c.total != p.total):
        problems.append(
            f"a cosine schedule depends on the run's length, so it branches only from a cosine "
            f"run of its own {c.total} steps; parent {name} has {p.total} steps and schedule "
            f"{parent['optim']['schedule']}"
        )
    if c.decay_start is not None and (c.decay_start < step or (p.decay_start or 0) < step):
        problems.append(
            f"branch step {step} lies after a decay start (run: step {c.decay_start}, parent "
            f"{name}: step {p.decay_start}); both schedules must be flat until the branch"
        )
    same_quant = child["quant"] == parent["quant"]
    late_quant = parent["quant"]["scheme"] == "bf16" and c.quant_start >= step
    if not (same_quant or late_quant):
        problems.append(
            f"quantization differs from its parent {name} before the branch step {step} "
            f"(the run quantizes from step {c.quant_start}, parent scheme "
            f"{parent['quant']['scheme']})"
        )
    tail = {k: parent["optim"][k] for k in _SCHEDULE_TAIL}
    aligned = {
        **child,
        "tokens": parent["tokens"],
        "optim": {**child["optim"], **tail},
        "quant": parent["quant"],
    }
    if run_key(aligned) != name:
        problems.append(
            f"differs from its parent {name} in more than what may change after a branch "
            "point (tokens, the schedule's tail, the quantization start)"
        )
    return problems


def cycle_problems(links: Links) -> list[str]:
    """Parents that lead back to their child."""
    problems = []
    for start in links:
        seen, key = [start], start
        while key in links:
            key = links[key][0]
            if key in seen:
                problems.append(f"parents form a cycle: {' -> '.join([*seen, key])}")
                break
            seen.append(key)
    return problems


def _link(by_key: dict[str, PlannedRun], links: Links) -> None:
    """Set each child's branch point and each parent's branch steps, in overrides and config."""
    steps_of: dict[str, set[int]] = defaultdict(set)
    for child, (parent, step) in links.items():
        run = by_key[child]
        run.parent, run.branch_step = parent, step
        run.overrides = [
            *run.overrides,
            f"branch.parent={hydra_value(parent)}",
            f"branch.step={step}",
        ]
        run.config["branch"] = {"parent": parent, "step": step}
        steps_of[parent].add(step)
    for parent, steps in steps_of.items():
        run, ordered = by_key[parent], sorted(steps)
        run.overrides = [*run.overrides, f"checkpoint.branch_steps={hydra_value(ordered)}"]
        run.config["checkpoint"] = {**run.config["checkpoint"], "branch_steps": ordered}


@dataclass(frozen=True)
class BranchCosts:
    """What branching saves: GPU-hours as branched (trunks included, each child from its
    branch step) and as independent runs (every grid run from scratch)."""

    children: int
    trunks: int
    branched: float
    independent: float


def branch_costs(runs: list[PlannedRun], mfu: float, peak_tflops: float) -> BranchCosts | None:
    """The sweep's costs with and without branching; None when no run branches."""
    children = sum(r.parent is not None for r in runs)
    if not children:
        return None
    hours = {r.run_key: r.gpu_hours(mfu, peak_tflops) for r in runs}
    return BranchCosts(
        children,
        sum(r.subgrid == TRUNK_SUBGRID for r in runs),
        sum(hours[r.run_key] * r.own_fraction for r in runs),
        sum(hours[r.run_key] for r in runs if r.subgrid != TRUNK_SUBGRID),
    )


# ----------------------------------------------------------------------------- launching


def parents_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """``runs`` with every parent before its children (otherwise in their order)."""
    by_key = {r.run_key: r for r in runs}

    def depth(run: PlannedRun) -> int:
        parent = by_key.get(run.parent or "")
        return 0 if parent is None else 1 + depth(parent)

    return sorted(runs, key=depth)


def branch_ready(run: PlannedRun) -> bool:
    """Whether the run can start: no parent, its branch checkpoint is there, or the parent
    completed without it (then the run rebuilds it, train/rebuild.py)."""
    if run.parent is None:
        return True
    parent_dir = run.run_dir.parent / run.parent
    if branch_checkpoint_path(parent_dir, run.branch_step or 0).is_dir():
        return True
    record = read_record(parent_dir)
    return record is not None and record["status"] == "completed"


def held_back(run: PlannedRun) -> str | None:
    """Why a child cannot start: its parent failed before the branch step (None otherwise)."""
    if run.parent is None or branch_ready(run):
        return None
    record = read_record(run.run_dir.parent / run.parent)
    if record is None:
        return None
    return (
        f"held back: parent {run.parent} {record['status']} before step {run.branch_step} "
        f"({record.get('error')})"
    )


def waiting_for_parents(runs: list[PlannedRun]) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(runs that can start now, children whose parent has not passed their branch step)."""
    ready = [r for r in runs if branch_ready(r)]
    return ready, [r for r in runs if not branch_ready(r)]


def held_shape(shape: LaunchProfile) -> LaunchProfile:
    """A launch shape whose jobs are queued held (``sbatch --hold``) until released."""
    return replace(shape, additional_parameters={**shape.additional_parameters, "hold": True})


def hold_for_parents(jobs: list[tuple[PlannedRun, str]]) -> None:
    """SLURM: children are submitted held; each job id is noted beside its parent's branch
    point, where the parent's trainer releases it once the checkpoint is kept. Then the ones
    whose checkpoint appeared meanwhile are released here: whichever of the two comes second
    sees the other's write, so no child stays held past its branch point."""
    for run, job_id in jobs:
        path = branch_release_path(run.run_dir.parent / str(run.parent), run.branch_step or 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        noted = path.read_text().split() if path.exists() else []
        write_atomic(path, "".join(f"{j}\n" for j in [*noted, job_id]))
    ready = [job_id for run, job_id in jobs if branch_ready(run)]
    if ready:
        subprocess.run(["scontrol", "release", ",".join(ready)], check=False, timeout=60)


def explain_waiting(runs: list[PlannedRun]) -> None:
    """A child that is queued or not started yet says what it waits for (status' reason)."""
    for run in runs:
        if run.parent is not None and run.status in ("pending", "missing"):
            reason = held_back(run)
            if reason is None and not branch_ready(run):
                reason = f"waiting for parent {run.parent} to pass step {run.branch_step}"
            run.reason = reason or run.reason


class BranchGate:
    """Local launches: each child waits until its branch checkpoint exists; a parent that ends
    without it (failed, killed) holds its children back with that reason."""

    def __init__(self, runs: list[PlannedRun], poll_s: float = 0.5) -> None:
        self.ended = {r.run_key: threading.Event() for r in runs}
        self.poll_s = poll_s

    def wait(self, run: PlannedRun, stop: threading.Event) -> str | None:
        """Block until ``run`` may start or ``stop`` is set (None), or is held back (the
        reason)."""
        while not (branch_ready(run) or stop.is_set()):
            ended = self.ended.get(run.parent or "")
            if ended is not None and ended.is_set() and not branch_ready(run):
                return held_back(run) or (
                    f"held back: parent {run.parent} ended before step {run.branch_step}"
                )
            if ended is None and held_back(run):  # a parent outside this launch failed
                return held_back(run)
            stop.wait(self.poll_s)
        return None

    def finished(self, run: PlannedRun) -> None:
        self.ended[run.run_key].set()
