"""The run config's shape, described once: the dataclasses Hydra composes `conf/train.yaml` onto.

`conf/train.yaml` names `run_schema` first in its defaults, so Hydra merges the YAML, the group
options and every override onto these types: a mistyped value, an unknown key or an unknown
word (`train.device=gpu`) fails at composition. The values live in the YAML files: fields have
no defaults (the quant fields keep QuantConfig's), so a key the YAML lacks is an error, never a
silent default. Plan's fast composition checks its plain trees against the same types with
`config.typed`; checks that need more than one key stay in `config.checks`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from qat_sweep.common import (
    DEVICES,
    PARALLELISMS,
    SCHEDULES,
    WANDB_MODES,
    InputError,
    parse_tokens,
    switch,
)
from qat_sweep.model.precision import QuantConfig
from qat_sweep.model.presets import ModelConfig

SCHEMA_NAME = "run_schema"  # the ConfigStore entry conf/train.yaml lists first in its defaults


class Word(str, Enum):
    """An allowed word of a config key: equal to its text and printed as it (OmegaConf checks
    an Enum-typed key against the member names, so the words come from one tuple each)."""

    __str__ = str.__str__
    __format__ = str.__format__


def _words(name: str, allowed: tuple[str, ...]) -> Any:
    return Word(name, [(w, w) for w in allowed], module=__name__, qualname=name)  # type: ignore[call-overload]


Device = _words("Device", DEVICES)
Parallelism = _words("Parallelism", PARALLELISMS)
Schedule = _words("Schedule", SCHEDULES)
WandbMode = _words("WandbMode", WANDB_MODES)

# --- what a field allows beyond its type: field metadata that `config.typed` checks ---


@dataclass(frozen=True)
class Bound:
    """The finite numbers a field allows: ``low`` and ``high`` ends, each closed or open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def describe(self, whole: bool) -> str:
        kind = "a whole number" if whole else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"


def bounded(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A required number field with allowed ends (messages state them)."""
    return field(default=MISSING, metadata={"bound": Bound(low, high, low_open, high_open)})


# Reads a value of key (the second argument), raising ValueError with the message naming both.
Parse = Callable[[Any, str], Any]


def parsed(parse: Parse) -> Any:
    """A required field whose value ``parse`` checks: what OmegaConf cannot type."""
    return field(default=MISSING, metadata={"parse": parse})


def _betas(value: Any, key: str) -> Any:
    if not (len(value) == 2 and all(0 <= b < 1 for b in value)):
        raise InputError(f"{key}={list(value)!r}: must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    return value


# --- the groups: model and quant reuse the trainer's dataclasses ---


def _composable(cls: type, name: str, types: dict[str, Any] | None = None) -> type:
    """``cls``'s fields, types and defaults as an unfrozen dataclass (a frozen one composes
    read-only, so no override could set it), with ``types`` for annotations OmegaConf cannot
    hold (unions such as QuantConfig's int | str | None group size)."""
    hints = typing.get_type_hints(cls)
    specs = [
        (f.name, (types or {}).get(f.name, hints[f.name]), field(default=_default(f)))
        for f in dataclasses.fields(cls)
    ]
    made = dataclasses.make_dataclass(name, specs)
    made.__module__, made.__qualname__ = __name__, name  # picklable, as submitit sends configs
    made.__doc__ = f"{cls.__name__}'s fields as a config group (see {cls.__module__})."
    return made


def _default(f: dataclasses.Field[Any]) -> Any:
    return MISSING if f.default is dataclasses.MISSING else f.default


ModelSchema = _composable(ModelConfig, "ModelSchema")
QuantSchema = _composable(QuantConfig, "QuantSchema", {"group_size": Any})  # an int or channel


@dataclass
class OptimSchema:
    """conf/optim/*.yaml: AdamW and its schedule."""

    name: str = MISSING
    lr: float = bounded(0, low_open=True)
    betas: list[float] = parsed(_betas)
    eps: float = bounded(0, low_open=True)
    weight_decay: float = bounded(0)
    decay_norms: bool = MISSING
    grad_clip: float = bounded(0, low_open=True)
    batch_seqs: int = bounded(1)
    schedule: Schedule = MISSING
    warmup_steps: int = bounded(0)
    warmup_max_fraction: float = bounded(0, 1)
    min_lr_ratio: float = bounded(0, 1)
    decay_fraction: float = bounded(0, 1, low_open=True)


@dataclass
class WandbSchema:
    mode: WandbMode = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    tags: list[str] = MISSING


@dataclass
class LoggerSchema:
    """conf/logger/*.yaml."""

    wandb: WandbSchema = MISSING
    progress_every_steps: int = bounded(1)


# --- train.yaml's own sections ---


@dataclass
class LossSmoothingSchema:
    fraction: float = bounded(0, 1, low_open=True)
    max_steps: int = bounded(1)


@dataclass
class TrainSchema:
    seq_len: int = bounded(1)
    micro_batch_seqs: int | None = bounded(1)
    loss_smoothing: LossSmoothingSchema = MISSING
    max_loss: float = bounded(0, low_open=True)
    device: Device = MISSING
    # Switches are typed Any and checked by `switch`: OmegaConf's Enum nodes refuse YAML
    # booleans (`train.compile=true` is one), and a run_key keeps the boolean as given.
    compile: Any = parsed(switch)
    autocast_bf16: Any = parsed(switch)
    threads: int | None = bounded(0)
    parallelism: Parallelism = MISSING
    activation_checkpointing: bool = MISSING


@dataclass
class EvalSchema:
    every_steps: int = bounded(0)
    batches: int = bounded(1)
    batch_seqs: int = bounded(1)
    micro_batch_seqs: int | None = bounded(1)


@dataclass
class CheckpointSchema:
    every_minutes: float = bounded(0)
    every_steps: int = bounded(0)
    keep: int = bounded(1)
    keep_on_success: bool = MISSING


@dataclass
class PathsSchema:
    runs: str = MISSING
    data: str = MISSING
    reports: str = MISSING


@dataclass
class RunConfig:
    """One run: conf/train.yaml with its groups, in the order Hydra composes them.

    ``data`` stays open: its options differ by kind (a prepared directory, or token files
    with their tokenizer and held-out split, see conf/data), and data_identity tells an absent
    key from a null one in run keys, so no key may be filled in; `data.tokenfiles` checks a
    data config when a run opens it.
    """

    model: ModelSchema = MISSING  # type: ignore[valid-type]
    quant: QuantSchema = MISSING  # type: ignore[valid-type]
    data: dict[str, Any] = MISSING
    optim: OptimSchema = MISSING
    logger: LoggerSchema = MISSING
    sweep_name: str = MISSING
    tokens: Any = parsed(parse_tokens)  # an int or a count such as 2M: OmegaConf has no int | str
    seed: int = bounded(0)
    # Derived from the others (config.compose.run_key): a tree being checked may lack it yet.
    run_key: str = field(default=MISSING, metadata={"derived": True})
    subgrid: str | None = MISSING
    holdout: bool = MISSING
    train: TrainSchema = MISSING
    eval: EvalSchema = MISSING
    checkpoint: CheckpointSchema = MISSING
    paths: PathsSchema = MISSING


# Each section of the run config and its schema; None: an open mapping (data).
SECTIONS: dict[str, type | None] = {
    f.name: None if f.name == "data" else typing.get_type_hints(RunConfig)[f.name]
    for f in dataclasses.fields(RunConfig)
    if dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[f.name]) or f.name == "data"
}

ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
