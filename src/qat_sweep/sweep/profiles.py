"""Launch profiles: one YAML file per cluster in ``launchers/`` (names are file stems).

A profile says where and with what resources each run of a sweep executes. It is validated
before anything is submitted: unknown keys, wrong types, and requests larger than the SLURM
partition offers are rejected with the file and key named. The same profile maps onto the
submitit executor (``executor_parameters``) and onto Hydra's submitit launcher
(``hydra_launcher_overrides``), so both launch paths use one description of the cluster.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qat_sweep.common import WANDB_MODES, structured_fields
from qat_sweep.config.compose import PROFILE_KEYS, hydra_value, is_profile_key
from qat_sweep.config_dirs import describe_dirs, options, search_dirs
from qat_sweep.estimates.flops import PEAK_BF16_TFLOPS
from qat_sweep.sweep.slurm_limits import PartitionLimits, partition_limits, slurm_output

KINDS = ("local", "slurm")
# What one entry of `resources` may change for the runs it selects (by model or sub-grid).
RESOURCE_KEYS = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
RESOURCE_KEYS += ("partition", "constraint", "gpu_mem_gb", "gpu_type", "peak_tflops")
RESOURCE_SELECTORS = ("models", "subgrids")


@dataclass(frozen=True)
class LaunchProfile:
    """Where and how the runs of a sweep execute (see launchers/template.yaml for each key)."""

    name: str
    kind: str
    max_parallel: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    array_parallelism: int = 64
    max_array_size: int | None = None
    signal_delay_s: int = 120
    requeue: bool = True
    setup: list[str] = field(default_factory=list)
    wandb_mode: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    folder: str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    gpu_mem_gb: float | None = None  # memory of one GPU: plan sizes every run to fit it
    gpu_type: str | None = None  # a key of estimates.flops.PEAK_BF16_TFLOPS: gives peak_tflops
    peak_tflops: float | None = None  # dense BF16 peak of one GPU, for wall-clock estimates
    resources: list[dict[str, Any]] = field(default_factory=list)  # per model / sub-grid

    @property
    def peak(self) -> float | None:
        """Dense BF16 FLOP/s of one GPU (peak_tflops, else the named gpu_type's)."""
        tflops = self.peak_tflops or PEAK_BF16_TFLOPS.get(self.gpu_type or "")
        return tflops * 1e12 if tflops else None

    @property
    def gpus(self) -> int:
        """GPUs one run uses (a local profile runs one process per run)."""
        per_node = min(self.gpus_per_node, 1) if self.kind == "local" else self.gpus_per_node
        return per_node * (self.nodes if self.kind == "slurm" else 1)

    @property
    def world_size(self) -> int:
        """Processes of one run: one task per GPU (or per node on CPU); one in all locally."""
        return self.tasks_per_node * self.nodes if self.kind == "slurm" else 1

    def for_run(self, model: str, subgrid: str) -> LaunchProfile:
        """This profile with the first `resources` entry that selects the run applied."""
        for entry in self.resources:
            models, subgrids = entry.get("models"), entry.get("subgrids")
            if (models is None or model in models) and (subgrids is None or subgrid in subgrids):
                values = {k: v for k, v in entry.items() if k in RESOURCE_KEYS}
                return replace(self, resources=[], **values)
        return replace(self, resources=[])

    def resource_shapes(self) -> list[LaunchProfile]:
        """Every distinct resource shape this profile can give a run (itself and each entry)."""
        return [replace(self, resources=[])] + [
            replace(self, resources=[], **{k: v for k, v in e.items() if k in RESOURCE_KEYS})
            for e in self.resources
        ]

    @property
    def tasks_per_node(self) -> int:
        """One DDP task per GPU (the trainer exports torch.distributed variables per task)."""
        return max(1, self.gpus_per_node)

    def train_overrides(self) -> list[str]:
        """Overrides every run gets on this cluster (execution settings, not the run identity)."""
        extra = [f"logger.wandb.mode={self.wandb_mode}"] if self.wandb_mode else []
        return [*self.overrides, *extra]


MIN_MEM_GB = 0.5  # a trainer process (Python, torch) needs this much: less is a slip
MAX_SIGNAL_DELAY_S = 65535  # sbatch --signal=SIG@DELAY takes at most this many seconds


def _mem_floor(mem_gb: float, where: str) -> str:
    return (
        f"{where}mem_gb={mem_gb:g} is {mem_gb * 1024:.3g} MB per node, below the {MIN_MEM_GB:g} GB "
        "a run's process needs (mem_gb is in GB, e.g. 16); null leaves it to the partition"
    )


def slurm_mem(mem_gb: float) -> str:
    """sbatch's --mem for ``mem_gb`` GB per node, in whole MB (rounded up, never 0: SLURM reads
    --mem=0 as all of a node's memory)."""
    return f"{max(1, math.ceil(mem_gb * 1024))}M"


# The smallest value of each count (types are the schema's, see common.structured_fields).
_MINIMUM = {"max_parallel": 1, "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1}
_MINIMUM |= {"timeout_min": 1, "array_parallelism": 1, "max_array_size": 1, "signal_delay_s": 0}


def available_profiles() -> list[str]:
    return list(options(search_dirs("launchers")))


def profile_path(name: str) -> Path:
    """The file of profile ``name``: ``launchers/<name>.yaml`` (the user's first) or a path."""
    if Path(name).suffix in (".yaml", ".yml"):
        return Path(name)
    found = options(search_dirs("launchers")).get(name)
    return found if found is not None else search_dirs("launchers")[-1] / f"{name}.yaml"


def load_profile(name_or_path: str | Path) -> LaunchProfile:
    """A validated profile by name (``launchers/<name>.yaml``) or by path to a YAML file."""
    path = profile_path(str(name_or_path))
    if not path.is_file():
        raise ValueError(
            f"unknown launch profile {str(name_or_path)!r}; available in "
            f"{describe_dirs(search_dirs('launchers'))}: {', '.join(available_profiles()) or '(none)'}"
        )
    from qat_sweep.config_dirs import load_yaml

    raw = load_yaml(path, ValueError)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a launch profile must be a mapping of keys to values")
    return profile_from_dict(path.stem, raw, source=str(path))


def profile_from_dict(name: str, raw: dict[str, Any], source: str = "<dict>") -> LaunchProfile:
    """Checks keys and types (the LaunchProfile schema), then the values, and builds the profile."""
    values, problems = structured_fields(LaunchProfile, {"name": name, **raw})
    if not problems:
        problems = _value_problems(name, values)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    return LaunchProfile(**values)


def _value_problems(name: str, values: dict[str, Any]) -> list[str]:
    """Every problem of a well-typed profile's values (all are reported at once)."""
    problems = []
    if values["name"] != name:
        problems.append(f"name={values['name']!r}: a profile is named by its file ({name!r})")
    if values["kind"] not in KINDS:
        problems.append(f"kind must be one of {list(KINDS)}, got {values['kind']!r}")
    for key, minimum in _MINIMUM.items():
        if values[key] is not None and values[key] < minimum:
            problems.append(f"{key} must be >= {minimum}, got {values[key]!r}")
    if values["mem_gb"] is not None and values["mem_gb"] <= 0:
        problems.append(f"mem_gb must be a positive number or null, got {values['mem_gb']!r}")
    elif values["mem_gb"] is not None and values["mem_gb"] < MIN_MEM_GB:
        problems.append(_mem_floor(values["mem_gb"], ""))
    if values["wandb_mode"] is not None and values["wandb_mode"] not in WANDB_MODES:
        problems.append(f"wandb_mode must be one of {list(WANDB_MODES)} or null")
    problems += _gpu_problems(values, "")
    for override in values["overrides"]:
        key = override.split("=", 1)[0].lstrip("+~")
        if not is_profile_key(key):
            problems.append(
                f"overrides: {override!r} sets {key}, which changes the runs' identity "
                f"(run_key) or place; a profile sets only how runs execute "
                f"({', '.join(PROFILE_KEYS)}): put it in the sweep file or on the command line"
            )
    for i, entry in enumerate(values["resources"]):
        problems += _resource_problems(entry, f"resources[{i}].")
    return problems


def placement(profile: LaunchProfile) -> dict[str, int | None]:
    """What validation knows of a run's devices before sizing: GPUs per node (None: varies).

    Ranks and micro-batches are chosen per run by ``sizing.size_sweep``, which checks them.
    """
    shapes = profile.resource_shapes()
    gpus = {shape.gpus_per_node for shape in shapes}
    return {"gpus": gpus.pop() if profile.kind == "slurm" and len(gpus) == 1 else None}


def _gpu_problems(raw: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key in ("gpu_mem_gb", "peak_tflops"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            problems.append(f"{where}{key} must be a positive number or null, got {value!r}")
    gpu = raw.get("gpu_type")
    if gpu is not None and gpu not in PEAK_BF16_TFLOPS:
        problems.append(
            f"{where}gpu_type={gpu!r} is not a known GPU; allowed: {', '.join(PEAK_BF16_TFLOPS)} "
            "(or set peak_tflops)"
        )
    return problems


def _resource_problems(entry: dict[str, Any], where: str) -> list[str]:
    """One `resources` entry: selectors (lists of names) and the keys it may change."""
    unknown = sorted(set(entry) - set(RESOURCE_KEYS) - set(RESOURCE_SELECTORS))
    problems = []
    if unknown:
        problems.append(
            f"{where} unknown key(s) {unknown}; allowed: "
            f"{', '.join(RESOURCE_SELECTORS + RESOURCE_KEYS)}"
        )
    if not any(k in entry for k in RESOURCE_SELECTORS):
        problems.append(f"{where} needs `models:` and/or `subgrids:` (lists of names)")
    for key in RESOURCE_SELECTORS:
        value = entry.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            problems.append(f"{where}{key} must be a list of names, got {value!r}")
    mem = entry.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int | float) or mem <= 0):
        problems.append(f"{where}mem_gb must be a positive number, got {mem!r}")
    elif mem is not None and mem < MIN_MEM_GB:
        problems.append(_mem_floor(mem, where))
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "timeout_min"):
        value = entry.get(key)
        minimum = 0 if key == "gpus_per_node" else 1
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < minimum
        ):
            problems.append(f"{where}{key} must be an integer >= {minimum}, got {value!r}")
    return problems + _gpu_problems(entry, where)


def executor_parameters(
    profile: LaunchProfile, parallelism: int | None = None, after: str | None = None
) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments for a SLURM profile: one array's, with
    ``parallelism`` tasks at once (default the profile's array_parallelism) and, ``after`` an
    array id, started once that array has ended (launch.array_limits chooses both)."""
    additional = dict(profile.additional_parameters)
    if profile.requeue:
        additional.setdefault("requeue", True)
    if after is not None:
        additional["dependency"] = f"afterany:{after}"
    params: dict[str, Any] = {
        "name": f"qat-{profile.name}",
        "timeout_min": profile.timeout_min,
        "nodes": profile.nodes,
        "tasks_per_node": profile.tasks_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "slurm_array_parallelism": parallelism or profile.array_parallelism,
        "slurm_signal_delay_s": profile.signal_delay_s,
        "slurm_additional_parameters": additional,
    }
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.mem_gb is not None:
        params["slurm_mem"] = slurm_mem(profile.mem_gb)
    setup = [f"export {k}={_shell_quote(v)}" for k, v in profile.env.items()] + profile.setup
    if setup:
        params["slurm_setup"] = setup
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(profile, key) is not None:
            params[f"slurm_{key}"] = getattr(profile, key)
    return params


def hydra_launcher_overrides(profile: LaunchProfile) -> list[str]:
    """The same profile as overrides for ``python -m qat_sweep.train -m ...`` (Hydra path).

    Maps onto hydra-submitit-launcher 1.2.0's ``SlurmQueueConf`` / ``LocalQueueConf`` keys;
    the profile's train overrides are appended as ordinary overrides.
    """
    if profile.kind == "local":
        out = ["hydra/launcher=submitit_local", f"hydra.launcher.timeout_min={profile.timeout_min}"]
        return out + profile.train_overrides()
    params = executor_parameters(profile)
    out = [
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.timeout_min={profile.timeout_min}",
        f"hydra.launcher.nodes={profile.nodes}",
        f"hydra.launcher.tasks_per_node={profile.tasks_per_node}",
        f"hydra.launcher.cpus_per_task={profile.cpus_per_task}",
        f"hydra.launcher.array_parallelism={profile.array_parallelism}",
        f"hydra.launcher.signal_delay_s={profile.signal_delay_s}",
    ]
    if profile.gpus_per_node:
        out.append(f"hydra.launcher.gpus_per_node={profile.gpus_per_node}")
    if profile.mem_gb is not None:  # in MB: the launcher's mem_gb is a whole number of GB
        out.append(f"+hydra.launcher.additional_parameters.mem={slurm_mem(profile.mem_gb)}")
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(profile, key) is not None:
            out.append(f"hydra.launcher.{key}={hydra_value(getattr(profile, key))}")
    if "slurm_setup" in params:
        out.append(f"hydra.launcher.setup={hydra_value(params['slurm_setup'])}")
    for key, value in params["slurm_additional_parameters"].items():  # a struct dict: add keys
        out.append(f"+hydra.launcher.additional_parameters.{key}={hydra_value(value)}")
    return out + profile.train_overrides()


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def check_against_cluster(profile: LaunchProfile) -> PartitionLimits | None:
    """Reject a SLURM profile that asks for more than its partition offers (nothing submitted)."""
    if profile.kind != "slurm":
        return None
    if shutil.which("sinfo") is None:
        raise ValueError(
            f"launch profile {profile.name!r} is a SLURM profile but `sinfo` is not on PATH: "
            "launch from a SLURM login node (or use launcher=local)"
        )
    shapes = profile.resource_shapes()
    for shape in shapes[1:]:
        if shape.partition != profile.partition:
            check_against_cluster(shape)
    shapes = [s for s in shapes if s.partition == profile.partition]
    limits = partition_limits(profile.partition)
    problems = []
    for shape in shapes:
        problems += _over_limits(shape, limits)
    cluster_max = cluster_max_array_size()
    if profile.max_array_size is not None and profile.max_array_size > cluster_max:
        problems.append(
            f"max_array_size={profile.max_array_size} > the cluster's MaxArraySize {cluster_max} "
            f"(allowed: 1..{cluster_max}, or leave it out)"
        )
    if problems:
        raise ValueError(
            f"launch profile {profile.name!r} ({profile_path(profile.name)}) asks for more than "
            f"partition {limits.name!r} offers: " + "; ".join(dict.fromkeys(problems))
        )
    return limits


def _over_limits(profile: LaunchProfile, limits: PartitionLimits) -> list[str]:
    problems = []
    if profile.cpus_per_task * profile.tasks_per_node > limits.cpus:
        problems.append(
            f"cpus_per_task x tasks_per_node = {profile.cpus_per_task * profile.tasks_per_node} "
            f"> {limits.cpus} CPUs per node"
        )
    if profile.mem_gb is not None and profile.mem_gb > limits.mem_gb:
        problems.append(f"mem_gb={profile.mem_gb:g} > {limits.mem_gb:.1f} GB per node")
    if profile.gpus_per_node > limits.gpus:
        problems.append(f"gpus_per_node={profile.gpus_per_node} > {limits.gpus} GPUs per node")
    if limits.max_time_min is not None and profile.timeout_min > limits.max_time_min:
        problems.append(f"timeout_min={profile.timeout_min} > MaxTime {limits.max_time_min} min")
    if profile.signal_delay_s >= profile.timeout_min * 60:
        problems.append(
            f"signal_delay_s={profile.signal_delay_s} >= timeout_min x 60 = "
            f"{profile.timeout_min * 60} s: the job would be told to stop as it starts"
        )
    if profile.signal_delay_s > MAX_SIGNAL_DELAY_S:
        problems.append(
            f"signal_delay_s={profile.signal_delay_s} > {MAX_SIGNAL_DELAY_S} s, the most "
            "sbatch --signal accepts"
        )
    if profile.nodes > limits.nodes:
        problems.append(
            f"nodes={profile.nodes} > {limits.nodes} nodes in the partition "
            f"(allowed: 1..{limits.nodes})"
        )
    return problems


def max_array_size(profile: LaunchProfile) -> int:
    """Tasks per array: the profile's cap, else the cluster's MaxArraySize (indices < it)."""
    if profile.max_array_size is not None:
        return profile.max_array_size
    return cluster_max_array_size()


def cluster_max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`): array indices stay below it."""
    for line in slurm_output("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return max(1, int(value.strip()))
    return 1001  # SLURM's default
