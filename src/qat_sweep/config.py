"""Run identity and config composition.

One resolved Hydra config describes one run; `run_key` turns it into a readable, deterministic
directory name, and `compose_run` builds that config from `key=value` overrides without
launching anything (the cheap way to expand a grid, see NOTES.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from qat_sweep.presets import CONF_DIR

# Config groups of conf/train.yaml: choosing one of these loads a file, everything else is a value.
CONFIG_GROUPS = ("model", "quant", "data", "optim", "logger")

# Keys that change how a run executes but not what it computes: left out of the run hash so
# a run resumed on another device, with another micro-batch or logger keeps its identity.
_EXECUTION_KEYS = ("paths", "logger", "eval", "checkpoint", "sweep_name", "run_key", "hydra")
_EXECUTION_TRAIN_KEYS = ("micro_batch_seqs", "device", "compile", "threads")

_TOKEN_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parse_tokens(value: Any) -> int:
    """Token budget from an int, a float like 2e6 or a string like '20B' / '500M' / '1.5M'."""
    if isinstance(value, bool):
        raise ValueError(f"tokens={value!r}: expected a token count such as 2000000, 2M or 20B")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBT]?)\s*", str(value))
        if not match:
            raise ValueError(
                f"tokens={value!r}: expected a token count such as 2000000, 2e6, 2M or 20B"
            )
        number = float(match.group(1)) * _TOKEN_SUFFIX.get(match.group(2), 1.0)
    if not math.isfinite(number) or number < 1 or number != round(number):
        raise ValueError(f"tokens={value!r}: must be a positive whole number of tokens")
    return round(number)


def format_tokens(tokens: int) -> str:
    """Short human form used in run keys: 10000000000 -> '10B', 2500000 -> '2.5M'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.4g}{suffix}"
    return str(tokens)


def _format_lr(lr: float) -> str:
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _group_label(group_size: Any) -> str:
    return "gch" if str(group_size) == "channel" else f"g{group_size}"


def _identity(cfg: DictConfig) -> dict[str, Any]:
    """The part of the config that determines what a run computes."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)  # Hydra resolves run dirs from run_key before its runtime keys
    container["run_key"] = ""  # the key is derived from this identity: never resolve it here
    plain = OmegaConf.create(container)
    identity = OmegaConf.to_container(plain, resolve=True)
    assert isinstance(identity, dict)
    for key in _EXECUTION_KEYS:
        identity.pop(key, None)
    for key in _EXECUTION_TRAIN_KEYS:
        identity.get("train", {}).pop(key, None)
    identity["data"] = {"name": identity.get("data", {}).get("name")}
    identity["tokens"] = parse_tokens(identity["tokens"])
    return identity


def run_key(cfg: DictConfig) -> str:
    """Readable, deterministic slug of a run: same config, same key; any change, new key.

    `<model>_D<tokens>_<scheme>[_<format>_g<G>]_lr<lr>_s<seed>_<hash6>`: the readable part
    names the grid point, the hash covers every other setting that changes the result.
    """
    identity = _identity(cfg)
    quant = identity["quant"]
    parts = [str(identity["model"]["name"]), f"D{format_tokens(identity['tokens'])}"]
    parts.append(str(quant["scheme"]))
    if quant["scheme"] != "bf16":
        parts += [str(quant["format"]), _group_label(quant["group_size"])]
    parts += [f"lr{_format_lr(float(identity['optim']['lr']))}", f"s{identity['seed']}"]
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return "_".join(parts) + "_" + digest[:6]


def _run_key_resolver(*, _root_: DictConfig) -> str:
    return run_key(_root_)


if not OmegaConf.has_resolver("qat_run_key"):
    OmegaConf.register_new_resolver("qat_run_key", _run_key_resolver)


def run_dir(cfg: DictConfig) -> Path:
    """`<paths.runs>/<sweep_name>/<run_key>`: the run's system of record."""
    return Path(cfg.paths.runs) / str(cfg.sweep_name) / str(cfg.run_key)


def conf_dir() -> Path:
    return Path(CONF_DIR)


def _ensure_hydra() -> None:
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(conf_dir()), version_base=None, job_name="qat_sweep")


@lru_cache(maxsize=256)
def _compose_groups(choices: tuple[str, ...]) -> DictConfig:
    _ensure_hydra()
    return compose(config_name="train", overrides=list(choices))


def compose_run(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The resolved config of one run, from Hydra-style `key=value` overrides.

    Group choices (`model=74M`) go through Hydra's compose API, cached per combination; plain
    values are parsed with Hydra's own override grammar and merged, so a 289-run grid composes
    in well under a second while meaning exactly what `qat-sweep train` would make of it.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices, values = [], []
    for override, text in zip(parsed, overrides, strict=True):
        is_group = override.key_or_group in CONFIG_GROUPS and not override.is_add()
        if is_group or override.is_delete() or override.is_add() or override.is_sweep_override():
            choices.append(text)
        else:
            values.append(override)
    cfg = OmegaConf.create(OmegaConf.to_container(_compose_groups(tuple(choices))))
    OmegaConf.set_struct(cfg, True)
    for override in values:
        key = override.key_or_group
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ValueError(
                f"unknown config key {key!r} in override {override.input_line!r}; "
                f"prefix it with '+' to add a new key"
            )
        OmegaConf.update(cfg, key, override.value(), merge=True)
    return cfg
