"""Torch-free checks of a run's config, as plan, launch and the trainer all run them first.

Each function returns problems (one sentence naming the key, the value and what is allowed),
so a sweep reports every bad run at once instead of failing on the first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from hydra.errors import HydraException

from qat_sweep.common import DEVICES, PARALLELISMS, SCHEDULES, SWITCHES
from qat_sweep.config.compose import compose_tree, parse_tokens, resolve_tree, run_key
from qat_sweep.config_dirs import options
from qat_sweep.model.precision import check_group_size, quant_config_from
from qat_sweep.model.presets import available_presets, conf_dirs, model_config_from


def schemes() -> list[str]:
    """Scheme names: the files of conf/quant (each names its scheme)."""
    return list(options(conf_dirs(), "quant"))


def _number(value: Any, integer: bool = False) -> float | None:
    """``value`` as a number (None if it is not one: strings, bools, lists)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if integer and (not math.isfinite(value) or value != int(value)):
        return None
    return float(value) if math.isfinite(value) else None


# (key, integer?, test, what is allowed): the value checks the trainer needs before step 1
_VALUE_CHECKS: tuple[tuple[str, bool, Any, str], ...] = (
    ("seed", True, lambda v: v >= 0, "a whole number >= 0"),
    ("optim.lr", False, lambda v: v > 0, "a number > 0"),
    ("optim.batch_seqs", True, lambda v: v >= 1, "a whole number of sequences >= 1"),
    ("optim.warmup_steps", True, lambda v: v >= 0, "a whole number of steps >= 0"),
    ("optim.warmup_max_fraction", False, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    ("optim.grad_clip", False, lambda v: v > 0, "a number > 0"),
    ("optim.weight_decay", False, lambda v: v >= 0, "a number >= 0"),
    ("optim.eps", False, lambda v: v > 0, "a number > 0"),
    ("optim.min_lr_ratio", False, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    ("optim.decay_fraction", False, lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("train.seq_len", True, lambda v: v >= 1, "a whole number of tokens >= 1"),
    ("train.max_loss", False, lambda v: v > 0, "a number > 0"),
    ("train.loss_smoothing.fraction", False, lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("train.loss_smoothing.max_steps", True, lambda v: v >= 1, "a whole number >= 1"),
    ("eval.batches", True, lambda v: v >= 1, "a whole number of batches >= 1"),
    ("eval.batch_seqs", True, lambda v: v >= 1, "a whole number of sequences >= 1"),
    ("eval.every_steps", True, lambda v: v >= 0, "a whole number of steps >= 0 (0 = ~10 evals)"),
    ("checkpoint.every_steps", True, lambda v: v >= 0, "a whole number of steps >= 0"),
    ("checkpoint.every_minutes", False, lambda v: v >= 0, "a number of minutes >= 0 (0 = off)"),
    ("checkpoint.keep", True, lambda v: v >= 1, "a whole number of checkpoints >= 1"),
    ("logger.progress_every_steps", True, lambda v: v >= 1, "a whole number of steps >= 1"),
)
_MISSING = object()


def _get(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def config_problems(config: dict[str, Any], gpus: int | None = None) -> list[str]:
    """The trainer's start-of-run checks on a resolved config, torch- and data-free.

    Shared by `plan`, `launch` (with the profile's ``gpus`` per node) and the trainer itself,
    so a value the trainer would refuse never reaches a job; how a batch splits over a run's
    GPUs is checked per run by ``sizing.size_sweep``.
    Messages name the key, the bad value and what is allowed, and never the run: the same
    problem in many runs is reported once.
    """
    problems = []
    for key, integer, test, allowed in _VALUE_CHECKS:
        value = _get(config, key)
        if value is _MISSING:
            continue
        number = _number(value, integer)
        if number is None or not test(number):
            problems.append(f"{key}={value!r}: must be {allowed}")
    try:
        tokens = parse_tokens(config.get("tokens"))
    except ValueError as e:
        problems.append(str(e))
        tokens = None
    betas = _get(config, "optim.betas")
    if betas is not _MISSING and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(_number(b) is not None and 0 <= b < 1 for b in betas)
    ):
        problems.append(f"optim.betas={betas!r}: must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    schedule = _get(config, "optim.schedule")
    if schedule is not _MISSING and schedule not in SCHEDULES:
        problems.append(f"optim.schedule={schedule!r}: allowed: {', '.join(SCHEDULES)}")
    parallelism = _get(config, "train.parallelism")
    if parallelism is not _MISSING and parallelism not in PARALLELISMS:
        problems.append(f"train.parallelism={parallelism!r}; allowed: {', '.join(PARALLELISMS)}")
    device = _get(config, "train.device")
    if device is not _MISSING and device not in DEVICES:
        problems.append(f"train.device={device!r}: allowed: {', '.join(DEVICES)}")
    elif device == "cuda" and gpus == 0:
        problems.append(
            "train.device='cuda' but the launch profile gives each run no GPU "
            "(gpus_per_node: 0); use train.device=cpu or auto, or a profile with GPUs"
        )
    compile_setting = _get(config, "train.compile")
    if compile_setting is not _MISSING and str(compile_setting).lower() not in SWITCHES:
        problems.append(f"train.compile={compile_setting!r}: allowed: {', '.join(SWITCHES)}")
    threads = _get(config, "train.threads")
    n_threads = _number(threads, integer=True)
    if threads not in (None, _MISSING) and (n_threads is None or n_threads < 0):
        problems.append(
            f"train.threads={threads!r}: must be null or 0 (torch's default) or a whole "
            "number of threads >= 1"
        )
    batch = _number(_get(config, "optim.batch_seqs"), integer=True)
    seq_len = _number(_get(config, "train.seq_len"), integer=True)
    micro = _get(config, "train.micro_batch_seqs")
    if micro is not None and micro is not _MISSING:
        micro_n = _number(micro, integer=True)
        if micro_n is None or micro_n < 1:
            problems.append(
                f"train.micro_batch_seqs={micro!r}: must be null (whole per-device batch) or a "
                "whole number >= 1"
            )
        elif batch and batch >= 1 and batch % micro_n:
            divisors = [d for d in range(1, int(batch) + 1) if batch % d == 0]
            problems.append(
                f"train.micro_batch_seqs={micro} does not divide the global batch of "
                f"{int(batch)} sequences (optim.batch_seqs); allowed: "
                f"{', '.join(map(str, divisors))}"
            )
    step_tokens = batch * seq_len if batch and seq_len and batch >= 1 and seq_len >= 1 else None
    if tokens is not None and step_tokens and tokens < step_tokens:
        problems.append(
            f"tokens={tokens} is smaller than one global batch ({int(batch)} sequences x "
            f"{int(seq_len)} tokens = {int(step_tokens)}); use tokens >= {int(step_tokens)}"
        )
    return problems


def run_problems(config: dict[str, Any]) -> list[str]:
    """What makes one composed run invalid, without touching data or allocating a model."""
    try:
        model = model_config_from(config["model"])
    except ValueError as e:
        return [str(e)]
    try:
        check_group_size(model, quant_config_from(config["quant"]))
    except ValueError as e:  # QuantConfig's own refusal: the trainer builds the same one
        return [str(e)]
    return []


def override_problems(overrides: list[str], has_cuda: bool | None = None) -> list[str]:
    """Why `qat-sweep train <overrides>` would be refused at its start (empty: it can run).

    The checks of `plan` for one run: composition, values, model/quant and whether its data
    is there or buildable; run by the train command before Hydra and the trainer start.
    """
    try:
        tree = resolve_tree(compose_tree(overrides))
        problems = config_problems(tree)
        if problems:
            return problems
        config = {**tree, "run_key": run_key(tree)}
        problems = run_problems(config)
    except COMPOSE_ERRORS as e:
        return [compose_problem(e)]
    if has_cuda is False and config["train"]["device"] == "cuda":
        problems.append("train.device='cuda' but this machine has no CUDA device")
    data = _data_problem(config["data"], load=False)
    return problems + ([data] if data else [])


# What composing one run can raise for a user's overrides (KeyError: a key a run needs, gone).
COMPOSE_ERRORS = (ValueError, KeyError, HydraException)


def compose_problem(error: Exception) -> str:
    if isinstance(error, KeyError):
        return (
            f"config key {error.args[0]!r} is missing: every run needs it (was it deleted "
            "with ~?); set it instead"
        )
    text = str(error).splitlines()[0]
    if text.startswith("Error parsing override"):
        return f"{text}: expected key=value (Hydra's override grammar), e.g. tokens=2M"
    if "model/" in text:
        return f"{text}; model presets: {', '.join(available_presets())}"
    if "quant/" in text:
        return f"{text}; schemes: {', '.join(schemes())}"
    return text


def _data_problem(data: dict[str, Any], load: bool) -> str | None:
    """Why a data config cannot feed a run: absent and not buildable, or corrupt (None: fine)."""
    from qat_sweep.data.tokenfiles import data_problem, needs_build

    problem = data_problem(data)  # file names and sizes only
    if problem is None and load and not needs_build(data):
        from qat_sweep.data.batches import open_data  # torch: only on the launch path

        try:
            open_data(data)  # also samples token ids
        except (ValueError, FileNotFoundError) as e:
            return f"data {data['name']!r}: {e}"
    return problem


def data_problems(configs: Mapping[str, dict[str, Any]], load: bool = False) -> dict[str, str]:
    """Problems of the data each run (run_key -> resolved config) needs, checked once per
    distinct data directory."""
    checked: dict[str, str | None] = {}
    problems = {}
    for key_of_run, config in configs.items():
        key = json.dumps(config["data"], sort_keys=True)
        if key not in checked:
            checked[key] = _data_problem(config["data"], load)
        if checked[key] is not None:
            problems[key_of_run] = checked[key]
    return problems
