"""Run identity and config composition.

One resolved Hydra config describes one run; `run_key` turns it into a readable, deterministic
directory name, and `compose_run` builds that config from `key=value` overrides without
launching anything (the cheap way to expand a grid, see docs/science.md, facts about the stack).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.qat_sweep_conf import QatSweepUserConf
from qat_sweep.common import InputError, format_count
from qat_sweep.common import parse_tokens as parse_tokens  # re-exported: plan and train parse here
from qat_sweep.config.typed import allowed, did_you_mean, schema_field, typed_tree
from qat_sweep.config_dirs import find, yaml_problem
from qat_sweep.data.tokenfiles import data_identity
from qat_sweep.model.precision import (
    BLOCK_FORMATS,
    GROUP_WORDS,
    format_label,
    quant_identity,
    quantizer_suffix,
)
from qat_sweep.model.presets import EARLIER_MODEL_VALUES, conf_dirs, model_config_from
from qat_sweep.record import sweep_dir

SWEEP_KEY = "sweep_name"  # the train config key naming runs/<sweep_name>/ (`sweep` is this group)
# Config groups of conf/train.yaml: choosing one of these loads a file, everything else is a value.
CONFIG_GROUPS = ("model", "quant", "data", "optim", "logger")

# Keys that change how a run executes but not what it computes: left out of the run hash so
# a run resumed on another device, with another micro-batch or logger keeps its identity.
_EXECUTION_KEYS = ("paths", "logger", "eval", "checkpoint", "sweep_name", "run_key", "hydra")
_EXECUTION_KEYS += ("subgrid", "holdout")  # plan membership: a run's place, not its result
_EXECUTION_KEYS += ("branch",)  # a branched run computes what it would from scratch
EXECUTION_TRAIN_KEYS = ("micro_batch_seqs", "device", "compile", "threads")
EXECUTION_TRAIN_KEYS += ("parallelism", "activation_checkpointing")
# Settings added after the first sweeps ran, at the values those runs used (the quant ones:
# precision.OPTIONAL_DEFAULTS): an identity leaves them out there, so a run that sets them all
# to these values keeps the run_key it had before they existed.
_EARLIER_VALUES: dict[str, dict[str, Any]] = {
    "model": EARLIER_MODEL_VALUES,
    "optim": {"decay_norms": False},
}
# What a launch profile may set: execution keys, but not a run's place (plan sets those).
PROFILE_KEYS = (
    "paths",
    "logger",
    "eval",
    "checkpoint",
    *(f"train.{k}" for k in EXECUTION_TRAIN_KEYS),
)


def is_profile_key(key: str) -> bool:
    """Whether a dotted config key may be set by a launch profile: it changes how a run
    executes, not its run_key, sweep_name or sub-grid (what `status` finds it by)."""
    top, _, rest = key.partition(".")
    return top in PROFILE_KEYS or f"{top}.{rest.split('.')[0]}" in PROFILE_KEYS


def _format_lr(lr: float) -> str:
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _group_label(group_size: Any) -> str:
    return "gch" if str(group_size) == "channel" else f"g{group_size}"


class _NeedsOmegaConf(Exception):
    """An interpolation the plain-dict resolver does not handle (resolver calls, escapes)."""


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def resolve_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A plain config tree with its `${a.b}` references resolved (`run_key` left out).

    Plain dicts resolve in microseconds where OmegaConf takes milliseconds per run, which is
    what keeps `plan sweep=paper` fast; anything beyond plain references (resolver calls such
    as `${oc.env:...}`, escapes, relative keys) falls back to OmegaConf itself.
    """
    tree = {k: v for k, v in tree.items() if k not in ("run_key", "hydra")}
    try:
        return _resolve(tree, tree, 0)
    except _NeedsOmegaConf:
        resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
        assert isinstance(resolved, dict)
        return resolved


def _resolve(value: Any, root: dict[str, Any], depth: int) -> Any:
    if depth > 32:
        raise _NeedsOmegaConf
    if isinstance(value, dict):
        return {k: _resolve(v, root, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, depth + 1) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(match: re.Match[str]) -> Any:
        node: Any = root
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise _NeedsOmegaConf
            node = node[part]
        return _resolve(node, root, depth + 1)

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole)
    if "\\" in value or "${" in _REFERENCE.sub("", value):
        raise _NeedsOmegaConf
    return _REFERENCE.sub(lambda m: str(lookup(m)), value)


def _identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines what a run computes."""
    identity = {k: v for k, v in resolved.items() if k not in _EXECUTION_KEYS}
    identity["train"] = {
        k: v for k, v in identity.get("train", {}).items() if k not in EXECUTION_TRAIN_KEYS
    }
    # Which corpus: its directory below paths.data (so moving paths.data keeps the keys), or
    # the directory itself when the run points elsewhere (two corpora never share a key).
    root = str(resolved.get("paths", {}).get("data", ""))
    identity["data"] = data_identity(resolved.get("data", {}), root)
    identity["tokens"] = parse_tokens(identity["tokens"])
    identity["quant"] = quant_identity(identity.get("quant", {}))
    for section, earlier in _EARLIER_VALUES.items():
        if isinstance(identity.get(section), dict):
            identity[section] = {
                k: v for k, v in identity[section].items() if earlier.get(k, _ABSENT) != v
            }
    return identity


_ABSENT = object()  # no earlier value: always kept


def _quant_label(quant: Mapping[str, Any]) -> tuple[str, Any]:
    """(format label, G) of a quantized run: the label names a block format's rounding, INT4
    range, a rotation (precision.format_label) and quantizers other than the paper's
    (precision.quantizer_suffix); a block format's G is its block."""
    fmt = str(quant["format"])
    label = format_label(
        fmt,
        quant.get("scale_rounding"),
        quant.get("int4_range"),
        quant.get("rotation", "none"),
        quant.get("rotation_block"),
        quant.get("rotation_seed"),
    ) + quantizer_suffix(quant)
    block = BLOCK_FORMATS[fmt].block if fmt in BLOCK_FORMATS else None
    return label, quant["group_size"] if block is None else block


def run_key(cfg: DictConfig | dict[str, Any]) -> str:
    """Readable, deterministic slug of a run: same config, same key; any change, new key.

    `<model>_D<tokens>_<scheme>[_<format>_g<G>][_from<f>]_lr<lr>_s<seed>_<hash6>`: the readable part
    names the grid point (the format as labelled, e.g. `mxfp4-had`, with a block format's block
    as G), the hash covers every other setting that changes the result.
    Takes a DictConfig or a plain tree (resolved or not).
    """
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    assert isinstance(tree, dict)
    identity = _identity(resolve_tree(tree))
    quant = identity["quant"]
    parts = [str(identity["model"]["name"]), f"D{format_count(identity['tokens'])}"]
    parts.append(str(quant["scheme"]))
    if quant["scheme"] != "bf16":
        label, group = _quant_label(quant)
        parts += [label, _group_label(group)]
    if quant.get("start_fraction"):  # QAT after BF16; absent at 0, as in keys made before it
        parts.append(f"from{float(quant['start_fraction']):g}")
    parts += [f"lr{_format_lr(float(identity['optim']['lr']))}", f"s{identity['seed']}"]
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return "_".join(parts) + "_" + digest[:6]


def twin_key(cfg: DictConfig | dict[str, Any]) -> str:
    """The run_key of a run's BF16 twin: the same config with the quant group set to bf16.

    The analysis pairs each quantized run with exactly this run, so runs that differ in any
    other setting (schedule, data, activation quantizer...) never borrow each other's twin.
    """
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    assert isinstance(tree, dict)
    bf16 = _group_option("quant", "bf16", tuple(conf_dirs()))
    return run_key({**tree, "quant": copy.deepcopy(bf16)})


def _run_key_resolver(*, _root_: DictConfig) -> str:
    return run_key(_root_)


if not OmegaConf.has_resolver("qat_run_key"):
    OmegaConf.register_new_resolver("qat_run_key", _run_key_resolver)
# Hydra finds plugins by walking the hydra_plugins package, which an editable install hides
# behind an import hook: registered here, Hydra (train, local launches) puts the user's conf/
# first as plan does, however the project is installed.
Plugins.instance().register(QatSweepUserConf)


def run_dir(config: DictConfig | Mapping[str, Any]) -> Path:
    """`<paths.runs>/<sweep_name>/<run_key>`: the run's system of record."""
    return sweep_dir(config["paths"]["runs"], config[SWEEP_KEY]) / str(config["run_key"])


def identity_fields(config: DictConfig | Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """`IDENTITY_FIELDS` of a run config (a DictConfig or a resolved tree): what plan rows and
    records say of the run. G is None for BF16 and a block format's block, the format its label
    (``mxfp4-had``: the analysis fits each label apart), N the non-embedding count of the model.

    ``strict=False`` is for the failure record of a config that does not build: each field
    that cannot be derived is None instead of an error.
    """

    def derive(compute: Callable[[], Any]) -> Any:
        try:
            return compute()
        except (ValueError, TypeError, KeyError, AttributeError, OmegaConfBaseException):
            if strict:
                raise
            return None

    quant = config["quant"]
    scheme = str(quant["scheme"])
    model = derive(lambda: model_config_from(config["model"]))
    label, group = ("bf16", None) if scheme == "bf16" else _quant_label(quant)
    return {
        "model": model.name if model else str(config["model"].get("name")),
        "n_params": model.n_params if model else None,
        "hidden_size": model.hidden_size if model else None,
        "tokens": derive(lambda: parse_tokens(config["tokens"])),
        "scheme": scheme,
        "format": label,
        "group_size": group if group in (None, *GROUP_WORDS) else derive(lambda: int(group)),
        "lr": derive(lambda: float(config["optim"]["lr"])),
        "seed": derive(lambda: int(config["seed"])),
        "start_fraction": derive(lambda: float(quant.get("start_fraction") or 0.0)),
    }


_hydra_dirs: tuple[Path, ...] | None = None  # the search path GlobalHydra was set up with


def _ensure_hydra(dirs: tuple[Path, ...]) -> None:
    """Hydra over ``dirs``: the packaged conf is primary, the plugin puts the user's first."""
    global _hydra_dirs
    if GlobalHydra.instance().is_initialized() and _hydra_dirs in (None, dirs):
        return  # ours, or set up by the caller (a Hydra app, a test)
    GlobalHydra.instance().clear()
    initialize_config_dir(config_dir=str(dirs[-1]), version_base=None, job_name="qat_sweep")
    _hydra_dirs = dirs


@lru_cache(maxsize=256)
def _compose_groups(choices: tuple[str, ...], dirs: tuple[Path, ...]) -> dict[str, Any]:
    _ensure_hydra(dirs)
    container = OmegaConf.to_container(compose(config_name="train", overrides=list(choices)))
    assert isinstance(container, dict)
    return container


@lru_cache(maxsize=256)
def _group_option(group: str, option: str, dirs: tuple[Path, ...]) -> Any:
    """One group option's subtree; plain files are read directly, anything else via Hydra."""
    path = find(list(dirs), f"{group}/{option}.yaml")
    if path is not None:
        text = path.read_text()
        if "defaults" not in text and "@package" not in text:
            try:
                return OmegaConf.to_container(OmegaConf.load(path))
            except yaml.YAMLError as e:  # a user's option file
                raise InputError(yaml_problem(path, e)) from None
    return _compose_groups((f"{group}={option}",), dirs)[group]


@lru_cache(maxsize=4096)
def parse_override(text: str) -> Any:
    """One `key=value` override as Hydra's grammar reads it (an `Override`); InputError names
    the override, its key and how to write it when the grammar refuses it."""
    try:
        override = OverridesParser.create().parse_overrides([text])[0]
    except OverrideParseException as e:
        lines = [line for line in str(e).splitlines() if not line.startswith(("Error", "See"))]
        reason = "an unclosed quote or bracket" if "LexerNoViableAlt" in str(e) else lines[0]
        key = text.partition("=")[0].lstrip("+~")
        raise InputError(
            f"cannot read override {text!r} (key {key!r}): {reason}; expected key=value in "
            "Hydra's override grammar, e.g. tokens=2M or optim.betas=[0.9,0.95]; quote a value "
            "holding = , [ ] { } or spaces: key='a value'"
        ) from None
    if not override.key_or_group:
        raise InputError(f"override {text!r} names no key; expected key=value, e.g. tokens=2M")
    value = override.value()
    if isinstance(value, float) and math.isinf(value) and "inf" not in text.lower():
        found = schema_field(override.key_or_group)
        bound = found[0].metadata.get("bound") if found else None
        raise InputError(
            f"{text}: {text.partition('=')[2]} is beyond the largest number a config holds "
            f"(about 1.8e308; it would read as inf)"
            + (f"; {allowed(*found)}" if bound else "")
            + ("; use e.g. 2M or 20B" if override.key_or_group == "tokens" else "")
        )
    return override


def hydra_value(value: Any) -> str:
    """A YAML value in Hydra's override grammar, read back as the same value: strings quoted.

    Inside quotes Hydra unescapes only backslashes before a quote (or the closing quote),
    so only those are doubled.
    """
    if isinstance(value, str):
        escaped = re.sub(r"(\\*)('|\Z)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
        return f"'{escaped}'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _set_value(tree: dict[str, Any], key: str, value: Any, line: str) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise ValueError(
            f"unknown config key {key!r} in override {line!r}{did_you_mean(key)}; the run "
            "config's keys are in conf/train.yaml and its groups"
        )
    node[leaf] = value


def _edits_structure(override: Any) -> bool:
    """Adds, deletes or merges keys (`+k=`, `++k=`, `~k`, `k={...}` / `k=[...]`, which Hydra
    merges into the node): only Hydra applies these exactly; the fast path sets leaf values."""
    if override.is_add() or override.is_force_add() or override.is_delete():
        return True
    return not override.is_sweep_override() and isinstance(override.value(), dict | list)


def compose_tree(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The plain, unresolved config tree of one run, from Hydra-style `key=value` overrides.

    Group choices (`model=74M`) go through Hydra (plain option files are read directly, the
    rest composed and cached); plain values are parsed with Hydra's own override grammar and
    set on a copy of the cached tree, which is then typed by the run schema as Hydra types it:
    the same config `qat-sweep train` builds, in microseconds. SchemaError (a ValueError)
    names a value the schema refuses.
    """
    parsed = [parse_override(text) for text in overrides]
    # A top-level section an override adds to, deletes from or merges into (`model=74M
    # +model.x=1`): Hydra applies all of that section's overrides, in order; other sections
    # commute with it, so they keep the fast path.
    edited = {o.key_or_group.split(".")[0] for o in parsed if _edits_structure(o)}
    choices, values, groups = [], [], {}
    for override, text in zip(parsed, overrides, strict=True):
        section = override.key_or_group.split(".")[0]
        is_group = override.key_or_group in CONFIG_GROUPS
        if section in edited or override.is_sweep_override():
            choices.append(text)
        elif is_group and isinstance(override.value(), str):
            groups[override.key_or_group] = override.value()
        elif is_group:
            choices.append(text)
        else:
            values.append(override)
    dirs = tuple(conf_dirs())
    tree = copy.deepcopy(_compose_groups(tuple(choices), dirs))
    for group, option in groups.items():
        tree[group] = copy.deepcopy(_group_option(group, option, dirs))
    for override in values:
        _set_value(tree, override.key_or_group, override.value(), override.input_line)
    return typed_tree(tree)  # the values Hydra's merge onto the schema gives, checked alike


def plan_config(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved plain config of one run, `run_key` included: what planning needs."""
    resolved = resolve_tree(compose_tree(overrides))
    resolved["run_key"] = run_key(resolved)
    return resolved


def compose_run(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config of one run as `qat-sweep train` would compose it (interpolations live)."""
    cfg = OmegaConf.create(compose_tree(overrides))
    OmegaConf.set_struct(cfg, True)
    return cfg
