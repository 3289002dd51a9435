"""Torch-free checks of a run's config, as plan, launch and the trainer all run them first.

What one key allows is the run schema's (config.schema, checked by config.typed); the checks
here need more than one key: a micro-batch against the batch, tokens against one step, a group
size against the model's widths, a device against the launch profile, data against its files.
Each function returns problems (one sentence naming the key, the value and what is allowed),
so a sweep reports every bad run at once instead of failing on the first.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from qat_sweep.common import creatable_dir_problem, format_count
from qat_sweep.config.compose import SWEEP_KEY, compose_tree, parse_tokens, resolve_tree, run_key
from qat_sweep.config.typed import SchemaError, schema_message, schema_problems
from qat_sweep.config_dirs import options
from qat_sweep.model.precision import check_group_size, quant_config_from
from qat_sweep.model.presets import available_presets, conf_dirs, model_config_from
from qat_sweep.record import name_problem


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
    eval_micro, eval_batch = config["eval"]["micro_batch_seqs"], int(config["eval"]["batch_seqs"])
    if eval_micro is not None and eval_batch % int(eval_micro):
        divisors = [d for d in range(1, eval_batch + 1) if eval_batch % d == 0]
        problems.append(
            f"eval.micro_batch_seqs={eval_micro} does not divide the eval batch of {eval_batch} "
            f"sequences (eval.batch_seqs); allowed: {', '.join(map(str, divisors))}"
        )
    problems += data_value_problems(config["data"])
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


# Every key a data config may have (conf/data: a prepared directory or token files); data
# stays an open mapping in the schema, so its keys and values are checked here.
DATA_KEYS = (
    "name", "dir", "root", "paths", "mix", "tokenizer", "dtype", "vocab_size", "eos_token_id",
    "val_paths", "val_fraction", "val_block", "build_if_missing", "check", "max_epochs",
)  # fmt: skip
DATA_CHECKS = ("sample", "full")


def data_value_problems(data: Mapping[str, Any]) -> list[str]:
    """Unknown data keys and values the data reader would refuse only once a run has started."""
    from qat_sweep.data.tokenfiles import DTYPES

    problems = [
        f"unknown config key 'data.{key}'{_closest(key, DATA_KEYS)}; allowed: "
        + ", ".join(DATA_KEYS)
        for key in data
        if key not in DATA_KEYS
    ]
    epochs = data.get("max_epochs")
    if epochs is not None and not (_is_number(epochs) and 0 < epochs < math.inf):
        problems.append(
            f"data.max_epochs={epochs!r}: must be null (no limit) or a number > 0 of passes "
            "over the training tokens"
        )
    if data.get("dtype", DTYPES[0]) not in DTYPES:
        problems.append(f"data.dtype={data['dtype']!r}: allowed: {', '.join(DTYPES)}")
    if data.get("check", "sample") not in DATA_CHECKS:
        problems.append(f"data.check={data['check']!r}: allowed: {', '.join(DATA_CHECKS)}")
    if not isinstance(data.get("build_if_missing", False), bool):
        problems.append(
            f"data.build_if_missing={data['build_if_missing']!r}: must be true or false"
        )
    for key in ("vocab_size", "eos_token_id", "val_block"):
        value = data.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            problems.append(f"data.{key}={value!r}: must be null or a whole number")
    fraction = data.get("val_fraction")
    if fraction is not None and not (_is_number(fraction) and 0 <= fraction <= 0.5):
        problems.append(f"data.val_fraction={fraction!r}: must be a number in [0, 0.5]")
    return problems


def _closest(key: str, keys: tuple[str, ...]) -> str:
    found = difflib.get_close_matches(key, keys, n=1)
    return f" (did you mean 'data.{found[0]}'?)" if found else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    budget = data_fit_problems({config["run_key"]: config}).values()
    runs = creatable_dir_problem("paths.runs", config["paths"]["runs"], "run directories")
    return problems + [p for p in (data, runs) if p] + list(budget)


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
    if missing := re.search(r"Could not find '(\w+)/([^']*)'", text):
        group, option = missing.groups()
        allowed = available_presets() if group == "model" else list(options(conf_dirs(), group))
        close = difflib.get_close_matches(option.lower(), [a.lower() for a in allowed], n=1)
        meant = [a for a in allowed if close and a.lower() == close[0]]
        noun = {"model": "model presets", "quant": "schemes"}.get(group, f"{group} options")
        return (
            f"{group}={option}: no such option"
            + (f" (did you mean {group}={meant[0]}?)" if meant else "")
            + f"; {noun}: {', '.join(allowed)}"
        )
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


def data_fit_problems(configs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Runs (run_key -> resolved config) their data cannot feed, from its files' sizes and
    manifest (the trainer's checks, before any job): a token budget needing more passes than
    ``data.max_epochs`` allows, token ids beyond the model's vocabulary."""
    from qat_sweep.data.tokenfiles import data_extent

    extents: dict[str, tuple[int, int] | None] = {}
    problems = {}
    for key_of_run, config in configs.items():
        data, epochs = config["data"], config["data"].get("max_epochs")
        key = json.dumps(data, sort_keys=True)
        if key not in extents:
            extents[key] = data_extent(data)
        if extents[key] is None:
            continue
        available, vocab = extents[key]  # type: ignore[misc]
        model_vocab = config["model"].get("vocab_size")
        if model_vocab is not None and model_vocab < vocab:
            problems[key_of_run] = (
                f"model.vocab_size={model_vocab} is smaller than the vocabulary of data "
                f"{data.get('name')!r} ({vocab} tokens); set model.vocab_size=null to take it "
                "from the data"
            )
            continue
        seq_len, batch = int(config["train"]["seq_len"]), int(config["optim"]["batch_seqs"])
        tokens = parse_tokens(config["tokens"])
        sequences = tokens // (batch * seq_len) * batch
        passes = sequences * (seq_len + 1) / available  # each window reads seq_len + 1
        if epochs is not None and passes > epochs:
            problems[key_of_run] = (
                f"tokens={format_count(tokens)} needs {passes:,.0f} passes over the "
                f"{available:,} tokens of data {data.get('name')!r}; data.max_epochs="
                f"{epochs:g} allows at most {epochs:g}: lower tokens, add data, or raise "
                "data.max_epochs"
            )
    return problems


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
