"""The run schema (config.schema): every key of conf/train.yaml and of its groups is typed once,
and a bad value is refused as the run is composed, by `plan` and `train` alike, in one line
naming the key, the value and the allowed values. What Hydra's types cannot say (a bound, a
word a YAML boolean may spell) the schema's rules check, before `plan` lists a run and
before the trainer builds one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf

from qat_sweep import common
from qat_sweep.cli import main
from qat_sweep.config import schema
from qat_sweep.config.checks import compose_problem
from qat_sweep.config.typed import schema_field
from qat_sweep.config_dirs import options
from qat_sweep.model.presets import CONF_DIR

TINY_SWEEP = "overrides: [data=demo, logger=none]\nsubgrids: {a: {model: 0.2M, tokens: 4096}}\n"
RUN = ["model=0.2M", "tokens=4096", "logger=none"]

# (override, the message's end: key, value and what is allowed)
BAD = [
    ("train.device=gpu", "train.device='gpu': allowed: auto, cpu, cuda"),
    ("train.autocast_bf16=maybe", "train.autocast_bf16='maybe': allowed: auto, true, false"),
    ("train.compile=ture", "train.compile='ture': allowed: auto, true, false"),
    ("train.parallelism=zero3", "train.parallelism='zero3': allowed: auto, single, ddp, fsdp"),
    ("optim.schedule=linear", "optim.schedule='linear': allowed: cosine, wsd"),
    (
        "logger.wandb.mode=sometimes",
        "logger.wandb.mode='sometimes': allowed: auto, online, offline, disabled",
    ),
    ("seed=abc", "seed='abc': must be a whole number >= 0"),
    ("seed=1.5", "seed=1.5: must be a whole number >= 0"),
    ("seed=-1", "seed=-1: must be a whole number >= 0"),
    ("train.threads=many", "train.threads='many': must be null or a whole number >= 0"),
    ("eval.batches=0", "eval.batches=0: must be a whole number >= 1"),
    ("optim.lr=-1", "optim.lr=-1: must be a number > 0"),
    ("optim.warmup_max_fraction=2", "optim.warmup_max_fraction=2: must be a number in [0, 1]"),
    ("holdout=maybe", "holdout='maybe': must be true or false"),
    ("tokens=abc", "tokens=abc: not a count"),
    ("optim.decay_norms=maybe", "optim.decay_norms='maybe': must be true or false"),
    ("model.init=xavier", "model.init='xavier': unknown initialisation; allowed: olmo2, scaled"),
    ("quant.weight_quantizer=gptq", "unknown quant.weight_quantizer 'gptq'; allowed: absmax"),
    ("quant.lac_param=tanh", "unknown quant.lac_param 'tanh'; allowed: sigmoid, raw"),
]
# Refused by Hydra's own merge onto the schema's types; the rest by the schema's rules.
HYDRA_REFUSES = {"train.device=gpu", "train.parallelism=zero3", "optim.schedule=linear"}
HYDRA_REFUSES |= {"logger.wandb.mode=sometimes", "seed=abc", "seed=1.5", "train.threads=many"}
HYDRA_REFUSES |= {"holdout=maybe", "optim.decay_norms=maybe"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(("override", "message"), BAD)
def test_plan_and_train_refuse_a_bad_value_naming_it(
    override: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SWEEP)
    for argv in (
        ["plan", "sweep=tiny.yaml", override],
        ["train", *RUN, f"paths.runs={tmp_path}/runs", override],
    ):
        code, output = _cli(argv, capsys)
        assert code == 2 and message in output, output
        assert "Traceback" not in output and len(output.strip().splitlines()) <= 3, output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("override", "message"), BAD)
def test_the_trainers_composition_refuses_it_alike(
    hydra_compose, override: str, message: str
) -> None:
    """Hydra refuses a mistyped value or an unknown word as it composes (its error becomes the
    same line); a value its types take, the trainer's start-up checks refuse."""
    from qat_sweep.train.setup import validate_run

    try:
        cfg = hydra_compose([*RUN, override])
    except HydraException as e:
        assert override in HYDRA_REFUSES
        assert message in compose_problem(e)
        return
    assert override not in HYDRA_REFUSES
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_run(cfg)


def _leaves(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def test_the_schema_types_every_key_of_train_yaml_and_its_groups() -> None:
    """Each leaf of train.yaml and of every shipped group option has a schema field (`data`
    options are open: their keys differ by kind)."""
    tree = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"))
    assert isinstance(tree, dict)
    keys = list(_leaves({k: v for k, v in tree.items() if k not in ("defaults", "hydra")}))
    for group in ("model", "quant", "optim", "logger"):
        for path in options([CONF_DIR], group).values():
            option = OmegaConf.to_container(OmegaConf.load(path))
            assert isinstance(option, dict)
            keys += _leaves({group: {k: v for k, v in option.items() if k != "defaults"}})
    assert len(keys) > 60
    assert [k for k in keys if schema_field(k) is None] == []
    assert schema.SECTIONS["data"] is None  # open, and said why in RunConfig's docstring


@pytest.mark.parametrize("group", ["model", "quant", "data", "optim", "logger"])
def test_every_schema_key_has_a_value_with_each_group_option(hydra_compose, group: str) -> None:
    """train.yaml and every option of each group fill every field: none is left MISSING."""
    for option in options([CONF_DIR], group):
        cfg = hydra_compose([f"{group}={option}"])
        assert OmegaConf.missing_keys(cfg) == set(), option


USER_OPTIONS = {
    # a preset of yours with a mistyped key
    "model/wide.yaml": (
        (CONF_DIR / "model" / "0.2M.yaml").read_text().replace("name: 0.2M", "name: wide")
    ).replace("hidden_size: 64", "hidden_size: wide"),
    # an optimizer option built on a shipped one, with a word the schedule does not have
    "optim/linear.yaml": "defaults: [adamw_cosine, _self_]\nname: linear\nschedule: linear\n",
    # a logger option with a key the schema does not have
    "logger/mine.yaml": (CONF_DIR / "logger" / "none.yaml").read_text() + "colour: red\n",
}
USER_CASES = [
    ("model=wide", "model.hidden_size='wide': must be a whole number"),
    ("optim=linear", "optim.schedule='linear': allowed: cosine, wsd"),
    ("logger=mine", "unknown config key 'logger.colour'; allowed: wandb, progress_every_steps"),
]


@pytest.mark.parametrize(("override", "message"), USER_CASES)
def test_a_user_group_option_with_a_bad_key_is_refused(
    override: str, message: str, tmp_path: Path, monkeypatch, capsys, hydra_compose
) -> None:
    for name, text in USER_OPTIONS.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    (tmp_path / "tiny.yaml").write_text(TINY_SWEEP)
    monkeypatch.chdir(tmp_path)
    for argv in (["plan", "sweep=tiny.yaml", override], ["train", *RUN, override]):
        code, output = _cli(argv, capsys)
        assert code == 2 and message in output and "Traceback" not in output, output
    GlobalHydra.instance().clear()
    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base=None),
        pytest.raises(HydraException) as refused,
    ):
        compose("train", overrides=[override])  # the trainer's Hydra app: the user's conf first
    GlobalHydra.instance().clear()
    assert message in compose_problem(refused.value)


def test_the_schemas_words_are_the_common_ones() -> None:
    """An allowed word is named once (common); the schema's Enums are made from those tuples."""
    for words, enum in [
        (common.DEVICES, schema.Device),
        (common.PARALLELISMS, schema.Parallelism),
        (common.SCHEDULES, schema.Schedule),
        (common.WANDB_MODES, schema.WandbMode),
    ]:
        assert tuple(m.value for m in enum) == words
        assert all(f"{m}" == m.value == str(m) for m in enum)  # printed as the word
