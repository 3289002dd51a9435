"""Sweep expansion: a sweep file in ``conf/sweep/`` becomes a validated list of planned runs.

Every run is composed with ``qat_sweep.config.compose.plan_config`` from the exact overrides that
``qat-sweep train`` would receive, so a plan row reproduces its run. All runs are validated
before anything is launched and all problems are reported at once: a grid that fails on run 200
of 289 after 199 submissions wastes a cluster day.

The spec and its expansion live in ``spec``, the checks in ``config.checks``, job state in
``jobs``; this module loads the file and plans the sweep. ``summary`` holds the 100-column
tables that ``qat-sweep plan`` and ``status`` print from the planned runs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf

from qat_sweep.config.checks import (
    COMPOSE_ERRORS,
    compose_problem,
    config_problems,
    data_problems,
    run_problems,
)
from qat_sweep.config.compose import (
    CONFIG_GROUPS,
    compose_tree,
    resolve_tree,
    run_key,
    twin_key,
)
from qat_sweep.config_dirs import describe_dirs, load_yaml, options
from qat_sweep.model.presets import conf_dirs
from qat_sweep.sweep.jobs import attach_status
from qat_sweep.sweep.spec import (
    PlanError,
    PlannedRun,
    SweepSpec,
    add_membership,
    add_twins,
    expand,
    planned_run,
)

SWEEP_KEYS = ("name", "overrides", "twins", "subgrids", "holdout")
MAX_LISTED_PROBLEMS = 60


def available_sweeps() -> list[str]:
    return list(options(conf_dirs(), "sweep"))


def load_sweep(name: str) -> SweepSpec:
    """Parse and check ``conf/sweep/<name>.yaml`` (the user's conf/ first) or a sweep file path."""
    if name.endswith((".yaml", ".yml")):
        path: Path | None = Path(name)
    else:
        path = options(conf_dirs(), "sweep").get(name)
    if path is None or not path.is_file():
        raise PlanError(
            f"unknown sweep {name!r}; available in {describe_dirs(conf_dirs(), 'sweep')}: "
            f"{', '.join(available_sweeps())}"
        )
    where = str(path)
    raw = load_yaml(path, PlanError)
    if not isinstance(raw, dict):
        raise PlanError(f"{where}: a sweep file must be a mapping with keys {list(SWEEP_KEYS)}")
    unknown = sorted(k for k in raw if k not in SWEEP_KEYS and not str(k).startswith("_"))
    if unknown:
        raise PlanError(
            f"{where}: unknown key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)} "
            "(keys starting with '_' are free, e.g. for YAML anchors)"
        )
    sweep_name = str(raw.get("name", path.stem))
    if sweep_name != path.stem:
        raise PlanError(f"{where}: name {sweep_name!r} must equal the file name {path.stem!r}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise PlanError(f"{where}: key 'overrides' must be a list of 'key=value' strings")
    if not isinstance(raw.get("twins", True), bool):
        raise PlanError(f"{where}: key 'twins' must be true or false")
    subgrids = raw.get("subgrids")
    if not isinstance(subgrids, dict) or not subgrids:
        raise PlanError(f"{where}: key 'subgrids' must be a non-empty mapping of named sub-grids")
    parsed: dict[str, dict[str, list[Any]]] = {}
    problems = []
    for sub, axes in subgrids.items():
        if not isinstance(axes, dict) or not axes:
            problems.append(f"subgrids.{sub}: must be a non-empty mapping of key: values")
            continue
        parsed[str(sub)] = {}
        for key, values in axes.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                problems.append(f"subgrids.{sub}.{key}: empty axis (give at least one value)")
            parsed[str(sub)][str(key)] = values
    problems += _unknown_axis_keys(parsed, overrides)
    holdout = raw.get("holdout") or []
    holdout = holdout if isinstance(holdout, list) else [holdout]
    problems += [
        f"holdout: {h!r} is not a sub-grid of this file ({', '.join(parsed)})"
        for h in holdout
        if str(h) not in parsed
    ]
    if problems:
        raise PlanError(f"{where}: " + "; ".join(problems))
    twins = raw.get("twins", True)
    return SweepSpec(sweep_name, path, list(overrides), twins, parsed, tuple(map(str, holdout)))


def holdout_keys(name: str, extra_overrides: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Run keys of the sweep's holdout sub-grids plus their BF16 twins: what `fit` keeps out."""
    spec = load_sweep(name)
    if not spec.holdout:
        return set()
    runs = [r for r in plan_sweep(name, extra_overrides, strict=False) if r.subgrid in spec.holdout]
    return {r.run_key for r in runs} | {twin_key(r.config) for r in runs}


def _unknown_axis_keys(
    subgrids: dict[str, dict[str, list[Any]]], overrides: list[str]
) -> list[str]:
    """Axis keys no run of the file can set: in neither the config its shared overrides
    compose nor any option of the key's config group (`data.paths` once a run picks data=npy).
    A run whose own group option lacks the key is refused when that run is composed."""
    try:
        base = OmegaConf.create(compose_tree(overrides))
    except (ValueError, HydraException):  # reported per run, with the run
        base = OmegaConf.create(compose_tree([]))
    problems = []
    for sub, axes in subgrids.items():
        for key in axes:
            if key.startswith("+") or key in CONFIG_GROUPS or _has_key(base, key):
                continue
            if not _in_some_option(key):
                problems.append(
                    f"subgrids.{sub}.{key}: unknown config key (config groups: "
                    f"{', '.join(CONFIG_GROUPS)}; or any key of conf/train.yaml such as tokens, "
                    f"seed, optim.lr, quant.group_size; prefix '+' to add a new key)"
                )
    return problems


def _has_key(config: Any, key: str) -> bool:
    return OmegaConf.select(config, key, default="__missing__") != "__missing__"


def _in_some_option(key: str) -> bool:
    group, _, rest = key.partition(".")
    if group not in CONFIG_GROUPS or not rest:
        return False
    for option in options(conf_dirs(), group):
        try:
            if _has_key(OmegaConf.create(compose_tree([f"{group}={option}"])[group]), rest):
                return True
        except (ValueError, HydraException):
            continue  # a broken option file: the runs that choose it say so
    return False


def plan_sweep(
    name: str,
    extra_overrides: list[str] | tuple[str, ...] = (),
    runs_root: str | Path | None = None,
    strict: bool = True,
    gpus: int | None = None,
) -> list[PlannedRun]:
    """Every run of sweep ``name``, validated, with its status; PlanError lists all problems.

    ``extra_overrides`` apply to every run (and its twin); ``runs_root`` sets ``paths.runs``.
    ``strict`` (launch) also loads each data directory: missing data is then an error.
    ``plan`` uses ``strict=False`` and only warns about data (a laptop without the corpus).
    ``gpus`` (per node) comes from the launch profile.
    """
    spec = load_sweep(name)
    extra = list(extra_overrides)
    if runs_root is not None:
        extra.append(f"paths.runs={Path(runs_root).resolve()}")
    explicit = expand(spec, extra)
    problems: dict[str, list[str]] = {}  # one entry per distinct problem: the runs it hits
    runs: list[PlannedRun] = []
    for sub, overrides in explicit:
        point = overrides[1 + len(spec.overrides) : len(overrides) - len(extra)]
        label = f"{sub} [{' '.join(point)}]"
        try:
            tree = resolve_tree(compose_tree(overrides))
            found = config_problems(tree, gpus)
            if not found:
                config = {**tree, "run_key": run_key(tree)}
                label, found = f"{sub} {config['run_key']}", run_problems(config)
        except COMPOSE_ERRORS as e:
            found = [compose_problem(e)]
        for problem in found:
            problems.setdefault(problem, []).append(label)
        if not found:
            runs.append(planned_run(sub, overrides, config))
    counts = Counter(r.run_key for r in runs)
    for key in sorted(k for k, n in counts.items() if n > 1):
        where = ", ".join(sorted({r.subgrid for r in runs if r.run_key == key}))
        problems[f"duplicate run {key}: appears {counts[key]} times (sub-grids: {where})"] = []
    if spec.twins and not problems:
        runs += add_twins(runs)
    if not problems and strict:
        found_by_run = data_problems({r.run_key: r.config for r in runs}, load=True)
        for run in runs:
            if run.run_key in found_by_run:
                label = f"{run.subgrid} {run.run_key}"
                problems.setdefault(found_by_run[run.run_key], []).append(label)
    if problems:
        raise PlanError(_problem_report(spec, len(explicit), problems))
    add_membership(runs, spec.holdout)
    attach_status(runs)
    return runs


def _problem_report(spec: SweepSpec, n_runs: int, problems: dict[str, list[str]]) -> str:
    """One line per distinct problem, naming the run it hits or how many runs share it."""
    listed = list(problems.items())[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    lines = [f"sweep {spec.name!r} ({spec.path}): {len(problems)} problem(s) in {n_runs} runs:"]
    for problem, labels in listed:
        if len(labels) == 1:
            lines.append(f"  - {labels[0]}: {problem}")
        elif len(labels) >= n_runs:
            lines.append(f"  - {problem} (all {len(labels)} runs)")
        elif labels:
            shown = ", ".join(labels[:2]) + (
                f" and {len(labels) - 2} more" if len(labels) > 2 else ""
            )
            lines.append(f"  - {problem} ({len(labels)} runs: {shown})")
        else:
            lines.append(f"  - {problem}")
    if more:
        lines.append(f"  ... and {more} more")
    lines.append("nothing was launched.")
    return "\n".join(lines)
