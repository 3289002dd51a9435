"""Plain config trees against the run schema: the conversion Hydra applies as it composes, every
problem of a tree by key, and OmegaConf's errors as the project's one-line messages.

Plan composes runs as plain trees (config.compose) and the trainer checks its resolved config as
one; both go through OmegaConf on `config.schema`'s dataclasses, so a value plan accepts is one
Hydra accepts, converted alike (lr=1 becomes 1.0 in both, and so in both run_keys). Results are
cached by each section's text: a 289-run plan repeats a few dozen distinct sections.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from qat_sweep.config.schema import SECTIONS, Bound, RunConfig


class SchemaError(ValueError):
    """Values the schema refuses; ``problems`` names each key, its value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _node(cls: type) -> DictConfig:
    """OmegaConf's structured node of ``cls`` (building one is the cost; callers copy it)."""
    return OmegaConf.structured(cls)


def typed_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree``'s values converted to the schema's types as Hydra converts them when it merges
    onto `run_schema`; keys added with ``+`` kept as Hydra keeps them, interpolations left for
    resolution. SchemaError names a value that does not convert."""
    sections = {k: v for k, v in tree.items() if SECTIONS.get(k) and isinstance(v, dict)}
    top = _typed(RunConfig, "", {k: v for k, v in tree.items() if k not in sections})
    return {k: _typed(SECTIONS[k], k, v) if k in sections else top[k] for k, v in tree.items()}


def _typed(cls: Any, section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    converted = json.loads(_typed_text(cls, section, json.dumps(values)))
    return converted if section else {k: converted[k] for k in values}


@functools.lru_cache(maxsize=4096)
def _typed_text(cls: type, section: str, text: str) -> str:
    node = _node(cls).copy()
    OmegaConf.set_struct(node, False)  # added keys stay, as with Hydra's +key=value
    try:
        node.merge_with(json.loads(text))
    except OmegaConfBaseException as e:
        raise SchemaError([schema_message(e, section)]) from None
    return json.dumps(OmegaConf.to_container(node, resolve=False))


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    """Every key of a resolved run config that the schema refuses: unknown, missing, mistyped,
    or outside its field's bound, words or parse; one sentence each, naming key and value."""
    problems = list(_problems(RunConfig, "", json.dumps(_without_sections(config))))
    for name, cls in SECTIONS.items():
        if cls is not None and name in config:
            problems += _problems(cls, f"{name}.", json.dumps(config[name]))
    return problems


def _without_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "<section>" if SECTIONS.get(k) else v for k, v in config.items()}


@functools.lru_cache(maxsize=4096)
def _problems(cls: type, prefix: str, text: str) -> tuple[str, ...]:
    data = json.loads(text)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        return (f"{prefix[:-1]}={data!r}: must be a mapping of {', '.join(fields)}",)
    problems = [_unknown(prefix + key, list(fields)) for key in data if key not in fields]
    node = _node(cls).copy()
    for name, f in fields.items():
        key, hint = prefix + name, _hints(cls)[name]
        if data.get(name, MISSING) == MISSING:
            if f.default == MISSING and not f.metadata.get("derived"):
                problems.append(f"config key {key!r} is missing: every run needs it; set it")
            continue
        value = data[name]
        if value == "<section>" or typing.get_origin(hint) is dict:
            continue  # checked on its own, or open (data)
        if dataclasses.is_dataclass(hint):
            problems += _problems(hint, key + ".", json.dumps(value))
            continue
        try:
            node[name] = value
            typed = node[name]
        except OmegaConfBaseException:
            problems.append(f"{key}={value!r}: {allowed(f, hint)}")
            continue
        bound, parse = f.metadata.get("bound"), f.metadata.get("parse")
        if typed is not None and bound is not None and not bound.allows(typed):
            problems.append(f"{key}={_shown(typed)}: {allowed(f, hint)}")
        elif typed is not None and parse is not None:
            try:
                parse(typed, key)
            except ValueError as e:
                problems.append(str(e))
    return tuple(problems)


def _shown(number: float) -> str:
    """A number as a user writes it: -1 for a float field's -1.0."""
    return str(int(number)) if isinstance(number, float) and number.is_integer() else repr(number)


def _unknown(key: str, allowed_keys: list[str]) -> str:
    return f"unknown config key {key!r}; allowed: {', '.join(allowed_keys)}"


def allowed(f: dataclasses.Field[Any], hint: Any) -> str:
    """What a field allows, as the end of a message: 'allowed: a, b' or 'must be ...'."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if isinstance(base, type) and issubclass(base, Enum):
        words = ", ".join(m.value for m in base)
        return f"allowed: {words}" + (" or null" if optional else "")
    bound: Bound | None = f.metadata.get("bound")
    if base in (int, float):
        what = bound.describe(base is int) if bound else f"a {'whole ' * (base is int)}number"
    elif typing.get_origin(base) is list:
        what = f"a list of {_NOUNS.get(typing.get_args(base)[0], 'value')}s"
    else:
        what = {str: "a string", bool: "true or false"}.get(base, f"a {_NOUNS.get(base, base)}")
    return f"must be {'null or ' * optional}{what}"


_NOUNS: dict[Any, str] = {str: "string", int: "whole number", float: "number", bool: "boolean"}


def schema_field(key: str) -> tuple[dataclasses.Field[Any], Any] | None:
    """The schema field of a dotted key and its type hint (None: no such field)."""
    cls: Any = RunConfig
    *parents, leaf = key.split(".")
    for part in parents:
        cls = _hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
    if not dataclasses.is_dataclass(cls):
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return (fields[leaf], _hints(cls)[leaf]) if leaf in fields else None


def schema_message(error: OmegaConfBaseException, section: str = "") -> str:
    """OmegaConf's refusal of a value or key (as Hydra composes, or `typed_tree` converts) as one
    sentence naming the key, the value and what is allowed."""
    key = ".".join(p for p in (section, str(error.full_key or error.key or "")) if p)
    if isinstance(error, ConfigTypeError) and "deletion" in str(error):
        return f"config key {key!r} cannot be deleted: every run needs it; set it instead"
    found = schema_field(key)
    if isinstance(error, ValidationError) and found is not None:
        value = getattr(error, "value", None)  # the refused value, as OmegaConf received it
        return f"{key}={value!r}: {allowed(*found)}"
    if isinstance(error, ConfigKeyError) or found is None:
        parent = schema_field(key.rpartition(".")[0]) if "." in key else None
        hint = parent[1] if parent else RunConfig
        if dataclasses.is_dataclass(hint):
            return _unknown(key, [f.name for f in dataclasses.fields(hint)])
    return f"{key}: {str(error).splitlines()[0]}"
