"""Plain config trees against the run schema: the conversion Hydra applies as it composes, every
problem of a tree by key, and OmegaConf's errors as the project's one-line messages.

Plan composes runs as plain trees (config.compose) and the trainer checks its resolved config as
one; both go through OmegaConf on `config.schema`'s dataclasses, so a value plan accepts is one
Hydra accepts, converted alike (lr=1 becomes 1.0 in both, and so in both run_keys). Results are
cached by each value and by each section's text: a 289-run plan repeats a few dozen sections.
"""

from __future__ import annotations

import dataclasses
import difflib
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
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Each field of dataclass ``cls`` and its type hint, in order."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


@functools.cache
def _scratch(cls: type) -> DictConfig:
    """OmegaConf's node of ``cls``, on which single values are tried: built once (building one
    is the cost), never merged, never read whole."""
    return OmegaConf.structured(cls)


@functools.lru_cache(maxsize=8192)
def _converted(cls: type, name: str, text: str) -> str | None:
    """One field's value as OmegaConf stores it once typed (JSON text; interpolations kept),
    or None: its type refuses the value. Values repeat across runs, so this is cached."""
    node = _scratch(cls)
    try:
        node[name] = json.loads(text)
    except OmegaConfBaseException:
        return None
    return json.dumps(OmegaConf.to_container(node, resolve=False)[name])


_SECTION = "<section>"  # stands for a section in the top-level keys: each is typed on its own
# A walk's findings: (refused, message); refused = the value's type refuses it, as Hydra's
# merge would, rather than a rule of the field, an unknown key or a missing one.
Finding = tuple[bool, str]


@functools.lru_cache(maxsize=4096)
def _section(cls: type, prefix: str, text: str) -> tuple[str, tuple[Finding, ...]]:
    """A section typed as Hydra types it (JSON text: fields in the schema's order, absent ones
    at their defaults, then keys added with +) and what is wrong with it, key by key."""
    data, fields = json.loads(text), _fields(cls)
    typed: dict[str, Any] = {}
    found: list[Finding] = []
    for name, (f, hint) in fields.items():
        key, value = prefix + name, data.get(name, MISSING)
        if value == _SECTION:
            typed[name] = value  # typed on its own
        elif value == MISSING:
            typed[name] = MISSING if f.default is dataclasses.MISSING else f.default
            if f.default == MISSING and not f.metadata.get("derived"):
                found.append((False, f"config key {key!r} is missing: every run needs it; set it"))
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            sub, sub_found = _section(hint, f"{key}.", json.dumps(value))
            typed[name], found = json.loads(sub), found + list(sub_found)
        elif (converted := _converted(cls, name, json.dumps(value))) is None:
            typed[name] = value
            found.append((True, f"{key}={value!r}: {allowed(f, hint)}"))
        else:
            typed[name] = json.loads(converted)
            found += [(False, p) for p in _rule_problems(f, hint, key, typed[name])]
    for key in data:
        if key not in fields:
            typed[key] = data[key]
            found.append((False, _unknown(prefix + key, list(fields))))
    return json.dumps(typed), tuple(found)


def _rule_problems(f: dataclasses.Field[Any], hint: Any, key: str, value: Any) -> list[str]:
    """What a field's bound or parse says of its typed value (interpolations are not yet
    values: they are checked once resolved)."""
    bound: Bound | None = f.metadata.get("bound")
    parse = f.metadata.get("parse")
    if value is None or (isinstance(value, str) and "${" in value):
        return []
    if bound is not None and not bound.allows(value):
        return [f"{key}={_shown(value)}: {allowed(f, hint)}"]
    if parse is not None:
        try:
            parse(value, key)
        except ValueError as e:
            return [str(e)]
    return []


def typed_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree``'s values typed as Hydra types them when it merges onto `run_schema`: 1 -> 1.0
    for a float, absent fields at their defaults, keys added with ``+`` kept, interpolations
    left for resolution. SchemaError names each value whose type refuses it."""
    typed, found = _walk(tree)
    refused = [message for is_type, message in found if is_type]
    if refused:
        raise SchemaError(refused)
    return typed


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    """Every key of a resolved run config that the schema refuses: unknown, missing, mistyped,
    or outside its field's bound or parse; one sentence each, naming key and value."""
    return [message for _, message in _walk(config)[1]]


def _walk(tree: Mapping[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
    """The tree typed, and its findings: each section is cached by its text (a 289-run plan
    repeats a few dozen), the top-level keys as one more section."""
    sections = [k for k, v in tree.items() if SECTIONS.get(k) and isinstance(v, dict)]
    top = {k: _SECTION if k in sections else v for k, v in tree.items()}
    text, found = _section(RunConfig, "", json.dumps(top))
    typed, findings = json.loads(text), list(found)
    for name in sections:
        text, found = _section(SECTIONS[name], f"{name}.", json.dumps(tree[name]))  # type: ignore[arg-type]
        typed[name] = json.loads(text)
        findings += found
    return {k: typed[k] for k in tree}, findings


def _shown(number: float) -> str:
    """A number as a user writes it: -1 for a float field's -1.0."""
    return str(int(number)) if isinstance(number, float) and number.is_integer() else repr(number)


def _unknown(key: str, allowed_keys: list[str]) -> str:
    return f"unknown config key {key!r}{did_you_mean(key)}; allowed: {', '.join(allowed_keys)}"


@functools.cache
def schema_keys() -> tuple[str, ...]:
    """Every dotted key of the run schema, sections included (data's own keys are open)."""

    def walk(cls: type, prefix: str) -> list[str]:
        keys = []
        for name, (_, hint) in _fields(cls).items():
            keys.append(prefix + name)
            if dataclasses.is_dataclass(hint):
                keys += walk(hint, f"{prefix}{name}.")  # type: ignore[arg-type]
        return keys

    return tuple(walk(RunConfig, ""))


def did_you_mean(key: str) -> str:
    """' (did you mean 'optim.lr'?)' for a misspelt or misplaced key, else ''.

    A key whose last part is a schema field's name elsewhere (train.lr) points there first;
    otherwise the closest dotted keys by spelling (optim.lrr)."""
    leaf = key.rpartition(".")[2]
    keys = schema_keys()
    found = [k for k in keys if k.rpartition(".")[2] == leaf and k != key]
    found.sort(key=lambda k: -difflib.SequenceMatcher(None, key, k).ratio())
    found = found or difflib.get_close_matches(key, keys, n=2, cutoff=0.75)
    if not found:
        leaves = {k.rpartition(".")[2]: k for k in keys}
        found = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=2, cutoff=0.8)]
    return f" (did you mean {' or '.join(map(repr, found))}?)" if found else ""


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
    elif dataclasses.is_dataclass(base):
        what = f"a mapping of {', '.join(_fields(base))}"  # type: ignore[arg-type]
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
        cls = (
            _fields(cls)[part][1]
            if dataclasses.is_dataclass(cls) and part in _fields(cls)
            else None
        )
    return _fields(cls).get(leaf) if dataclasses.is_dataclass(cls) else None


def schema_message(error: OmegaConfBaseException) -> str:
    """OmegaConf's refusal of a value or key, as Hydra raises it while composing, as one
    sentence naming the key, the value and what is allowed."""
    key = str(error.full_key or error.key or "")
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
            return _unknown(key, list(_fields(hint)))
    return f"{key}: {str(error).splitlines()[0]}"
