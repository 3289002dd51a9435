"""The sweep spec and its expansion: sub-grids of override axes become planned runs, each
with its BF16 twin, sub-grid and holdout flag. Loading and validating the file is grid's job."""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qat_sweep.config.compose import (
    SWEEP_KEY,
    hydra_value,
    identity_fields,
    plan_config,
    run_dir,
    twin_key,
)
from qat_sweep.config.steps import own_fraction
from qat_sweep.estimates.flops import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, gpu_hours, paper_flops
from qat_sweep.sweep.compute import model_flops

TWIN_SUBGRID = "bf16_twins"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: shared overrides plus named sub-grids of override axes."""

    name: str
    path: Path
    overrides: list[str]
    twins: bool
    subgrids: dict[str, dict[str, list[Any]]]
    holdout: tuple[str, ...] = ()  # sub-grids kept out of the fit and predicted from it
    branched: tuple[str, ...] = ()  # sub-grids with `branch: tokens`: WSD trunks (branches)


@dataclass
class PlannedRun:
    """One run of a sweep: its identity, grid coordinates, overrides and current status."""

    run_key: str
    subgrid: str
    model: str
    n_params: int
    hidden_size: int
    tokens: int
    scheme: str
    format: str
    group_size: int | str | None
    lr: float
    seed: int
    start_fraction: float
    overrides: list[str]
    run_dir: Path
    config: dict[str, Any] = field(repr=False)  # resolved, plain: cheap for 289 runs
    status: str = "missing"
    error: str | None = None
    job_id: str | None = None
    log: str | None = None
    reason: str | None = None  # why the scheduler keeps it pending (squeue %r)
    diverged: bool = False  # failed with a record saying diverged: a rerun diverges again
    sizing: Any = None  # sizing.RunSizing once sized for a launch profile
    resources: Any = None  # the profile.LaunchProfile shape it runs with
    parent: str | None = None  # the run whose checkpoint it starts from (branches)
    branch_step: int | None = None  # the parent's step it starts at

    @property
    def own_fraction(self) -> float:
        """The part of the run's steps it trains itself: after its branch step, if any."""
        return own_fraction(self.config)

    @property
    def flops(self) -> float:
        """The paper's compute 6ND (N non-embedding): the law's axis, not what the run costs."""
        return paper_flops(self.n_params, self.tokens)

    @functools.cached_property
    def model_flops(self) -> float:
        """What the run executes (the model count train's MFU uses): its GPU-hours come from it."""
        return model_flops(self.config)

    def gpu_hours(self, mfu: float, peak_tflops: float) -> float:
        return gpu_hours(self.model_flops, mfu, peak_tflops)

    def row(
        self, mfu: float = DEFAULT_MFU, peak_tflops: float = DEFAULT_PEAK_TFLOPS
    ) -> dict[str, Any]:
        """The plan row of docs/architecture.md (``plan --json``): ``flops`` is the paper's 6ND,
        ``model_flops`` the model count that ``gpu_hours`` (``mfu`` of ``peak_tflops``) uses."""
        return {
            "run_key": self.run_key,
            "model": self.model,
            "n_params": self.n_params,
            "hidden_size": self.hidden_size,
            "tokens": self.tokens,
            "scheme": self.scheme,
            "format": self.format,
            "group_size": self.group_size,
            "lr": self.lr,
            "seed": self.seed,
            "start_fraction": self.start_fraction,
            "parent": self.parent,
            "branch_step": self.branch_step,
            # the plan row's statuses; a queued run counts as running, its job_state says pending
            "status": "running" if self.status == "pending" else self.status,
            "job_state": self.status if self.status in ("running", "pending") else None,
            "overrides": list(self.overrides),
            "subgrid": self.subgrid,
            "run_dir": str(self.run_dir),
            "flops": self.flops,
            "model_flops": self.model_flops,
            "gpu_hours": self.gpu_hours(mfu, peak_tflops),
            "branched_gpu_hours": self.gpu_hours(mfu, peak_tflops) * self.own_fraction,
            "error": self.error,
            "job_id": self.job_id,
            "log": self.log,
            **(self.sizing.row() if self.sizing is not None else {}),
        }


class PlanError(ValueError):
    """A sweep that cannot be launched; the message lists every offending run."""


def override_value(value: Any) -> str:
    """A YAML value as it is written on the Hydra command line, in Hydra's grammar (JSON's
    {"k": v} is no Hydra dict). A string is override text (`2M`, `channel`: `suggest` writes
    values so); in a list or dict it stays a string."""
    return str(value) if isinstance(value, str) else hydra_value(value)


def _is_quant_key(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "quant" or key.startswith("quant.")


def expand(spec: SweepSpec, extra: list[str]) -> list[tuple[str, list[str]]]:
    """(sub-grid, overrides) of every explicit run, in file order (twins are added later)."""
    shared = [f"{SWEEP_KEY}={spec.name}", *spec.overrides]
    runs = []
    for sub, axes in spec.subgrids.items():
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = [f"{k}={override_value(v)}" for k, v in zip(keys, values, strict=True)]
            runs.append((sub, [*shared, *point, *extra]))
    return runs


def _twin_overrides(overrides: list[str]) -> list[str]:
    """The BF16 twin of a run: same overrides without the quant ones, quant=bf16."""
    kept = [o for o in overrides if not _is_quant_key(o)]
    return [*kept[:1], "quant=bf16", *kept[1:]]


def planned_run(sub: str, overrides: list[str], config: dict[str, Any]) -> PlannedRun:
    return PlannedRun(
        run_key=config["run_key"],
        subgrid=sub,
        **identity_fields(config),
        overrides=overrides,
        run_dir=run_dir(config),
        config=config,
    )


def add_membership(runs: list[PlannedRun], holdout: tuple[str, ...]) -> None:
    """`subgrid=` and `holdout=` overrides: each run's record and wandb config say where it
    belongs. Both keys stay out of run_key; the held-out set is `holdout_keys`'s (the holdout
    sub-grids plus their BF16 twins)."""
    held = [r for r in runs if r.subgrid in holdout]
    held_keys = {r.run_key for r in held} | {twin_key(r.config) for r in held}
    for run in runs:
        flag = run.run_key in held_keys
        membership = [f"subgrid={json.dumps(run.subgrid)}", f"holdout={override_value(flag)}"]
        run.overrides = [*run.overrides, *membership]
        run.config |= {"subgrid": run.subgrid, "holdout": flag}


def add_twins(runs: list[PlannedRun]) -> list[PlannedRun]:
    """One BF16 twin per distinct non-quant cell, skipping cells that already have one."""
    have = {r.run_key for r in runs}
    cells = dict.fromkeys(tuple(_twin_overrides(r.overrides)) for r in runs if r.scheme != "bf16")
    twins = []
    for overrides in cells:
        config = plan_config(list(overrides))
        key = config["run_key"]
        if key not in have:
            have.add(key)
            twins.append(planned_run(TWIN_SUBGRID, list(overrides), config))
    return twins
