"""Sizing a planned run for a launch profile's GPUs: micro-batch, parallelism, hours, segments.

Plan calls ``size_run`` for every run before anything is submitted: the chosen settings become
execution overrides of the run (not part of its run_key), so the trainer does what plan
printed; a run that fits no configuration is refused with its estimate and the limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from qat_sweep.config.compose import twin_key
from qat_sweep.estimates.device_fit import HEADROOM, divisors, fit
from qat_sweep.estimates.flops import PEAK_BF16_TFLOPS, gpu_hours
from qat_sweep.estimates.memory import GB
from qat_sweep.model.precision import quant_config_from
from qat_sweep.model.presets import model_config_from
from qat_sweep.sweep.compute import model_flops, vocab_size
from qat_sweep.sweep.profiles import LaunchProfile

# Minutes of each time-limit segment spent starting, compiling and resuming.
RESTART_MIN = 10


@dataclass(frozen=True)
class RunSizing:
    """How one run executes on its profile (the plan row's sizing columns)."""

    micro_batch_seqs: int
    eval_micro_batch_seqs: int
    parallelism: str  # single | ddp | fsdp
    gpus: int
    memory_gb: float  # estimated peak per GPU
    wall_h: float | None  # at the stated MFU; None without a GPU peak (CPU)
    segments: int | None  # time-limit segments (jobs) the run takes

    def overrides(self) -> list[str]:
        """Execution overrides that make the trainer run exactly this sizing."""
        return [
            f"train.micro_batch_seqs={self.micro_batch_seqs}",
            f"train.parallelism={self.parallelism}",
            f"eval.micro_batch_seqs={self.eval_micro_batch_seqs}",
        ]

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["memory_gb"] = round(self.memory_gb, 2)
        row["wall_h"] = None if self.wall_h is None else round(self.wall_h, 2)
        return row


class SizingError(ValueError):
    """A run that fits no configuration of its profile, or settings that cannot work."""


def size_run(config: dict[str, Any], profile: LaunchProfile, mfu: float) -> RunSizing:
    """The largest micro-batch that fits, DDP where it fits and FSDP otherwise; SizingError else."""
    model = model_config_from(config["model"])
    quant = quant_config_from(config["quant"])
    train, run_key = config["train"], config["run_key"]
    vocab, seq_len = vocab_size(config), int(train["seq_len"])
    world, global_batch = profile.world_size, int(config["optim"]["batch_seqs"])
    on_gpu = profile.gpus_per_node > 0 and str(train.get("device")) != "cpu"
    wanted = str(train.get("parallelism") or "auto")  # a schema word: plan checked the config
    if global_batch % world:
        raise SizingError(
            f"global batch of {global_batch} sequences does not split over the {world} GPUs of "
            f"profile {profile.name!r}; allowed GPU counts: {divisors(global_batch)[::-1][:12]}"
        )
    per_rank = global_batch // world
    multi = "ddp", "fsdp"
    if wanted == "auto":
        candidates = list(multi) if world > 1 else ["single"]
    elif (wanted in multi) != (world > 1):
        allowed = "ddp, fsdp" if world > 1 else "single (one GPU per run)"
        raise SizingError(
            f"train.parallelism={wanted} does not fit {world} process(es) per run on profile "
            f"{profile.name!r}; allowed: {allowed}"
        )
    else:
        candidates = [wanted]
    fixed = train.get("micro_batch_seqs")
    if fixed is not None and per_rank % int(fixed):
        raise SizingError(
            f"train.micro_batch_seqs={fixed} does not divide the per-GPU batch of {per_rank} "
            f"sequences ({global_batch} over {world}); allowed: {divisors(per_rank)}"
        )
    micro_options = [int(fixed)] if fixed is not None else divisors(per_rank)
    if on_gpu and profile.gpu_mem_gb is None:
        raise SizingError(
            f"launch profile {profile.name!r} gives runs GPUs but no gpu_mem_gb: set it "
            "(e.g. gpu_mem_gb: 80) so plan can size micro-batch and parallelism"
        )
    if on_gpu and profile.peak is None:
        raise SizingError(
            f"launch profile {profile.name!r} gives runs GPUs but neither gpu_type "
            f"({', '.join(PEAK_BF16_TFLOPS)}) nor peak_tflops: plan cannot estimate wall-clock hours"
        )
    budget = profile.gpu_mem_gb * GB * HEADROOM if on_gpu else math.inf
    checkpointing = bool(train.get("activation_checkpointing"))
    fitted = fit(
        model, quant, vocab_size=vocab, seq_len=seq_len, world_size=world,
        candidates=candidates, micro_options=micro_options,
        eval_batch_seqs=int(config["eval"]["batch_seqs"]),
        activation_checkpointing=checkpointing, budget=budget, on_gpu=on_gpu,
    )  # fmt: skip
    if isinstance(fitted, float):
        limit = f"{profile.gpu_mem_gb:g} GB x {HEADROOM} headroom = {budget / GB:.1f} GB per GPU"
        hint = "" if checkpointing else "; try train.activation_checkpointing=true"
        raise SizingError(
            f"run {run_key} fits no configuration of profile {profile.name!r}: at least "
            f"{fitted / GB:.1f} GB per GPU ({', '.join(candidates)}, micro-batch "
            f"{micro_options[-1]}) against {limit}; give it more GPUs (resources: in the "
            f"profile){hint}"
        )
    parallelism, micro, eval_micro, peak = fitted
    wall_h = segments = None
    if on_gpu:
        wall_h = gpu_hours(model_flops(config), mfu, profile.peak / 1e12) / profile.gpus
        usable = max(1, profile.timeout_min - RESTART_MIN - profile.signal_delay_s / 60)
        segments = max(1, math.ceil(wall_h * 60 / usable))
    return RunSizing(
        micro_batch_seqs=micro, eval_micro_batch_seqs=eval_micro, parallelism=parallelism,
        gpus=profile.gpus, memory_gb=peak / GB, wall_h=wall_h, segments=segments,
    )  # fmt: skip


def size_family(
    family: list[Any], profile: LaunchProfile, mfu: float
) -> tuple[LaunchProfile, list[RunSizing]]:
    """One execution for a BF16 run and its quantized twins, so their delta carries only
    quantization: the most constrained member decides (FSDP over DDP, then the smallest
    micro-batch), on the resource shape with the most GPUs, and every member runs with it.
    Eval micro-batches stay per run: they change no training step."""
    shape = max((profile.for_run(r.model, r.subgrid) for r in family), key=lambda s: s.gpus)
    own = [size_run(run.config, shape, mfu) for run in family]
    decider = max(own, key=lambda s: (s.parallelism == "fsdp", -s.micro_batch_seqs))
    chosen = {"parallelism": decider.parallelism, "micro_batch_seqs": decider.micro_batch_seqs}
    return shape, [
        size_run({**run.config, "train": {**run.config["train"], **chosen}}, shape, mfu)
        for run in family
    ]


def _family_key(run: Any) -> str:
    """A twin family's name: the BF16 run's run_key (its own for a BF16 run)."""
    return run.run_key if run.scheme == "bf16" else twin_key(run.config)


def size_sweep(
    runs: list[Any], profile: LaunchProfile, mfu: float, sweep_runs: list[Any] | None = None
) -> None:
    """Sizes every PlannedRun for its resource shape and appends the chosen overrides.

    A run is sized with its twin family (`size_family`), drawn from ``sweep_runs`` (default
    ``runs``): a launch that reruns one quantized run sizes it as its completed twin ran.
    Raises sweep.PlanError listing every run that cannot be sized: nothing is launched then.
    """
    from qat_sweep.sweep.spec import PlanError

    families: dict[str, list[Any]] = {}
    for run in sweep_runs or runs:
        families.setdefault(_family_key(run), []).append(run)
    sized: dict[str, tuple[LaunchProfile, RunSizing]] = {}
    problems = []
    for run in runs:
        if run.run_key not in sized:
            family = families.get(_family_key(run)) or [run]
            family = family if run in family else [*family, run]
            try:
                shape, sizings = size_family(family, profile, mfu)
            except SizingError as e:
                problems.append(f"{run.subgrid} {run.run_key}: {e}")
                continue
            sized |= {r.run_key: (shape, s) for r, s in zip(family, sizings, strict=True)}
        run.resources, run.sizing = sized[run.run_key]
        run.overrides = [*run.overrides, *run.sizing.overrides()]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:60])
        more = f"\n  ... and {len(problems) - 60} more" if len(problems) > 60 else ""
        raise PlanError(
            f"{len(problems)} run(s) cannot be sized for profile {profile.name!r}:\n"
            f"{listed}{more}\nnothing was launched."
        )
