"""Torch-free checks of a run's config, as plan, launch and the trainer all run them first.

What one key allows is the run schema's (config.schema, checked by config.typed); the checks
here need more than one key: a micro-batch against the batch, tokens against one step, a group
size against the model's widths, a device against the launch profile, data against its files.
Each function returns problems (one sentence naming the key, the value and what is allowed),
so a sweep reports every bad run at once instead of failing on the first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from qat_sweep.config.compose import SWEEP_KEY, compose_tree, parse_tokens, resolve_tree, run_key
from qat_sweep.config.typed import SchemaError, schema_message, schema_problems
from qat_sweep.config_dirs import options
from qat_sweep.model.precision import check_group_size, quant_config_from
from qat_sweep.model.presets import available_presets, conf_dirs, model_config_from
from qat_sweep.record import name_problem


def schemes() -> list[str]:
    """Scheme names: the files of conf/quant (each names its scheme)."""
    return list(options(conf_dirs(), "quant"))


def config_problems(config: dict[str, Any], gpus: int | None = None) -> list[str]:
    """The trainer's start-of-run checks on a resolved config, torch- and data-free.

    Shared by `plan`, `launch` (with the profile's ``gpus`` per node) and the trainer itself,
    so a value the trainer would refuse never reaches a job: first every key against the run
    schema, then the checks that need more than one key. How a batch splits over a run's GPUs
    is checked per run by ``sizing.size_sweep``. Messages name the key, the bad value and what
    is allowed, and never the run: the same problem in many runs is reported once.
    """
    problems = schema_problems(config)
    if problems:
        return problems  # the checks below read typed values
    problems += place_problems(config)
    train, batch = config["train"], int(config["optim"]["batch_seqs"])
    micro, seq_len = train["micro_batch_seqs"], int(train["seq_len"])
    if micro is not None and batch % int(micro):
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        problems.append(
            f"train.micro_batch_seqs={micro} does not divide the global batch of {batch} "
            f"sequences (optim.batch_seqs); allowed: {', '.join(map(str, divisors))}"
        )
    tokens = parse_tokens(config["tokens"])
    if tokens < batch * seq_len:
        problems.append(
            f"tokens={tokens} is smaller than one global batch ({batch} sequences x "
            f"{seq_len} tokens = {batch * seq_len}); use tokens >= {batch * seq_len}"
        )
    if train["device"] == "cuda" and gpus == 0:
        problems.append(
            "train.device='cuda' but the launch profile gives each run no GPU "
            "(gpus_per_node: 0); use train.device=cpu or auto, or a profile with GPUs"
        )
    return problems


def place_problems(config: Mapping[str, Any]) -> list[str]:
    """Why the run directory `<paths.runs>/<sweep_name>/<run_key>` would not lie below
    paths.runs (checked before anything, a failure record included, is written there)."""
    names = {SWEEP_KEY: config[SWEEP_KEY], "run_key": config.get("run_key")}
    problems = [p for k, v in names.items() if v is not None and (p := name_problem(k, v))]
    if not str(config["paths"]["runs"]).strip():
        problems.append("paths.runs='': give the directory that holds the sweeps, e.g. runs")
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
        raw = compose_tree(overrides)
        tree = resolve_tree(raw)
        problems = config_problems(tree)
        given = str(raw.get("run_key"))  # a run_key set by hand, not derived (${qat_run_key:})
        if not given.startswith("${") and (problem := name_problem("run_key", given)):
            problems.append(problem)
        if problems:
            return problems
        config = {**tree, "run_key": run_key(tree)}
        problems = run_problems(config)
    except SchemaError as e:
        return e.problems
    except COMPOSE_ERRORS as e:
        return [compose_problem(e)]
    if has_cuda is False and config["train"]["device"] == "cuda":
        problems.append("train.device='cuda' but this machine has no CUDA device")
    data = _data_problem(config["data"], load=False)
    return problems + ([data] if data else [])


# What composing one run can raise for a user's overrides (KeyError: a key a run needs, gone).
COMPOSE_ERRORS = (ValueError, KeyError, HydraException)


def compose_problem(error: Exception) -> str:
    """One sentence for what composing a run raised: the schema's refusal (as Hydra raises it
    while merging an override) names the key, the value and what is allowed."""
    # Hydra raises its own error from OmegaConf's: as the cause (an override), or while
    # handling it (a group option's file)
    cause = error.__cause__ or error.__context__
    if isinstance(error, HydraException) and isinstance(cause, OmegaConfBaseException):
        return schema_message(cause)
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
