"""What plan validates is what train runs: plan's fast composition against Hydra's own.

`plan` composes runs without Hydra where it can (`config.compose_tree`); local launches and
`qat-sweep train` compose with Hydra (`@hydra.main`). For each override list both must give
the same config and run_key, or refuse it alike, and a sweep's planned runs must be the runs
the trainer composes from the planned overrides (so `status` finds their records).
"""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf

from qat_sweep.config.compose import compose_run, compose_tree, plan_config, twin_key
from qat_sweep.model.presets import CONF_DIR
from qat_sweep.sweep.plan import available_sweeps, plan_sweep

AGREE = [
    ["optim.betas=[0.9,0.99]", "model=0.2M"],
    ["optim.lr=1e-3", "seed=7", "tokens=1e6"],
    ["quant=w4a4", "quant.group_size=null", "quant.format='fp4'"],
    ["model.name=${quant.scheme}", "tokens=${model.seq_len}"],  # interpolations as values
    ["data=npy", "data.paths=[a.npy,b.npy]"],
    ["++tokens=3M", "++optim.lr=2e-3", "optim=adamw_wsd"],  # ++ on existing keys
    ["model=0.2M", "++model.dropout=0.1"],  # ++ adds a key as + does
    ["++seed_note=x"],
    ["train.loss_smoothing={fraction:0.1}"],  # a dict merges into the node: max_steps stays
    ["logger.wandb={mode:disabled}", "logger=wandb"],
    ["train.loss_smoothing.fraction=0.2", "train.loss_smoothing={max_steps:9}"],
    ["optim.lr=1", "++optim.lr=2"],  # an int where the schema has a float: 2.0 in both
    ["data=olmo2", "~data.mix", "+data.mix=m.txt"],  # data is open: its keys may go and come
    ["seed='3'", "checkpoint.every_minutes=5"],  # converted to the schema's int and float
]


@pytest.mark.parametrize("overrides", AGREE)
def test_plan_composes_the_config_and_run_key_hydra_does(
    hydra_compose, overrides: list[str]
) -> None:
    hydra = hydra_compose(overrides)
    assert OmegaConf.to_container(compose_run(overrides)) == OmegaConf.to_container(hydra)
    assert plan_config(overrides)["run_key"] == hydra.run_key


REFUSED = [
    ["train.loss_smoothing={foo:1}"],  # a dict may not add keys to a node
    ["optim.betas={a:1}"],  # nor merge into a list
    ["train.loss_smoothing=[1,2]"],  # nor a list into a dict
    ["model.nope=1"],
    ["model=0.2M", "model.hidden_size={x:1}", "model.hidden_size=64"],  # a dict over an int
    ["quant=w4a4", "quant.group_size=64", "~quant.group_size", "+quant.group_size=32"],
    ["quant=w4a4", "~quant.act_quantizer"],  # a key of the schema cannot be deleted
    ["train.device=gpu"],  # a word the schema does not allow
    ["seed=abc"],  # a value the schema's type does not take
]


@pytest.mark.parametrize("overrides", REFUSED)
def test_plan_refuses_what_hydra_refuses(hydra_compose, overrides: list[str]) -> None:
    with pytest.raises(HydraException):
        hydra_compose(overrides)
    with pytest.raises((ValueError, HydraException)):
        compose_tree(overrides)


@pytest.mark.parametrize("sweep", available_sweeps())
def test_planned_runs_are_the_runs_train_composes(hydra_compose, sweep: str) -> None:
    """Each sub-grid's first and last run and twin: the trainer's config, run_key and twin."""
    runs = plan_sweep(sweep, strict=False)
    keys = {r.run_key: r for r in runs}
    picked = {}
    for run in runs:
        picked.setdefault(run.subgrid, []).append(run)
    for group in picked.values():
        for run in {id(r): r for r in (group[0], group[-1])}.values():
            cfg = hydra_compose(run.overrides)
            assert cfg.run_key == run.run_key
            assert OmegaConf.to_container(cfg, resolve=True) == run.config
            if run.scheme != "bf16":
                assert keys[twin_key(cfg)].scheme == "bf16"


QUANT_CASES = [
    ["quant=w4a4", "quant.group_size=64"],
    ["quant=w4a4", "quant.group_size=64.0"],  # a float G: QuantConfig wants an int
    ["quant=w4a4", "quant.group_size=true"],
    ["quant=w4a4", "quant.group_size=channel", "quant.format=fp4"],
    ["quant=w4a4", "quant.act_quantizer=lac"],
    ["quant=w4a4", "quant.act_quantizer=foo"],
    ["quant=bf16", "quant.act_quantizer=foo"],  # checked for BF16 too
    ["quant=w4a4_fc2a8", "quant.fc2_format=int4"],
    ["quant=w4a4", "quant.fc2_format=bad"],
    ["quant=w4a4", "+quant.note=x"],  # QuantConfig has no such field
    ["quant=w4a4", "quant.format=int8"],
    ["quant=w4a4", "quant.group_size=48"],
    ["quant=w4a4", "quant.format=mxfp4"],  # G 128 with a block format
    ["quant=w4a4", "quant.format=mxfp4", "quant.group_size=null"],
    ["quant=w4a4", "quant.format=nvint4", "quant.group_size=16", "quant.int4_range=full"],
    ["quant=w4a4", "quant.format=nvfp4", "quant.group_size=null", "quant.scale_rounding=rceil"],
    ["quant=w4a4", "quant.group_size=32", "quant.rotation=hadamard", "quant.rotation_block=256"],
    ["quant=w4a4", "quant.group_size=32", "quant.rotation=hadamard", "quant.rotation_seed=1"],
    ["quant=w4a4", "quant.group_size=channel", "quant.rotation=hadamard"],
    ["quant=bf16", "quant.rotation=hadamard"],
    ["quant=w4a4", "quant.group_size=tensor"],
    ["quant=w4a4", "quant.group_size=tensor", "quant.rotation=hadamard"],
    ["quant=w4a16", "quant.weight_quantizer=lwc", "quant.group_size=32"],
    ["quant=w4a16", "quant.weight_quantizer=lwc", "quant.format=fp4"],
    ["quant=w4a16", "quant.weight_quantizer=lsq", "quant.format=nvfp4", "quant.group_size=null"],
    ["quant=w4a4", "quant.lac_param=raw", "quant.lac_init=0.9"],
    ["quant=w4a4", "quant.lac_init=2.5"],
    ["quant=w4a4", "quant.absmax_grad=true"],
    ["quant=w4a4_fc2a8", "quant.fc2_format=int8_full"],
    ["model.init=scaled", "model.qk_norm=true", "model.z_loss=1e-5"],
    ["model.norm_eps=0"],
]


@pytest.mark.parametrize("overrides", QUANT_CASES)
def test_plan_refuses_the_quant_configs_the_trainer_refuses(overrides: list[str]) -> None:
    """plan's torch-free model/quant checks against the trainer's QuantConfig and validate."""
    from qat_sweep.config.checks import run_problems
    from qat_sweep.model.precision import quant_config_from
    from qat_sweep.model.presets import model_config_from
    from qat_sweep.model.transformer import validate

    config = plan_config(overrides)
    try:
        model = model_config_from(config["model"])
        validate(model, quant_config_from(config["quant"]), model.vocab_size or 1)
        trainer_refuses = False
    except ValueError:
        trainer_refuses = True
    assert bool(run_problems(config)) == trainer_refuses


def test_plan_refuses_a_scheme_file_naming_a_scheme_the_trainer_lacks(
    tmp_path, monkeypatch
) -> None:
    """A user's conf/quant/w8a8.yaml is a quant option, but w8a8 is no scheme of the trainer."""
    from qat_sweep.config.checks import run_problems

    (tmp_path / "conf" / "quant").mkdir(parents=True)
    text = "scheme: w8a8\nformat: int4\ngroup_size: 32\nact_quantizer: auto\nfc2_format: int8\n"
    (tmp_path / "conf" / "quant" / "w8a8.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert run_problems(plan_config(["quant=w8a8"])) == [
        "unknown scheme 'w8a8'; allowed: bf16, w4a4, w4a16, w16a4, w4a4_fc2a8, w16a4_fc2a8"
    ]


def test_the_torch_free_format_names_are_the_quantizers() -> None:
    """precision (which plan imports without torch) names exactly the formats quantize has."""
    from qat_sweep.model import precision
    from qat_sweep.model import quantizers as quantize

    assert tuple(quantize.FORMATS) == precision.FORMAT_NAMES
    assert set(precision.WEIGHT_FORMATS) == {n for n, f in quantize.FORMATS.items() if f.bits == 4}


EXECUTION_OVERRIDES = ["train.device=cpu", "train.threads=1", "checkpoint.every_minutes=5"]
EXECUTION_OVERRIDES += ["logger.wandb.mode=offline", "paths.data=/scratch/data", "eval.batches=2"]


def test_a_profile_sets_only_how_runs_execute() -> None:
    """Runs keep their run_key whatever profile launches them, so `status` (which takes no
    profile) finds them; a profile override that would change it is refused by name."""
    from qat_sweep.sweep.profiles import profile_from_dict

    profile = profile_from_dict("x", {"kind": "local", "overrides": EXECUTION_OVERRIDES})
    base = ["model=0.2M", "quant=w4a4", "quant.group_size=32"]
    key = plan_config(base)["run_key"]
    assert plan_config([*base, *profile.train_overrides()])["run_key"] == key
    for bad in ["seed=3", "data=custom", "+model.x=1", "train.seq_len=64", "sweep_name=other"]:
        with pytest.raises(ValueError, match=re.escape(f"overrides: {bad!r} sets ")):
            profile_from_dict("x", {"kind": "local", "overrides": [bad]}, source="x.yaml")


def test_status_looks_where_the_profile_put_the_runs(tmp_path, monkeypatch, capsys) -> None:
    """`launch ... launcher=P` runs under P's paths.runs; `status ... launcher=P` looks there."""
    import json

    from qat_sweep.commands.status import main as status_main

    (tmp_path / "launchers").mkdir()
    profile = f"kind: local\noverrides: [paths.runs={tmp_path}/scratch]\n"
    (tmp_path / "launchers" / "scratch.yaml").write_text(profile)
    monkeypatch.chdir(tmp_path)
    assert status_main(["sweep=demo", "launcher=scratch", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["run_dir"].startswith(f"{tmp_path}/scratch/demo/") for r in rows)


@pytest.mark.parametrize(
    "override, refused",
    [
        ("train.compile=ture", True),
        ("train.compile=true", False),
        ("train.compile=False", False),
        ("train.threads=-2", True),
        ("train.threads=0", False),  # 0 and null: torch's default
        ("train.threads=2", False),
    ],
)
def test_plan_refuses_the_execution_settings_the_trainer_refuses(
    override: str, refused: bool
) -> None:
    """train.compile and train.threads are read when the trainer starts, after submission."""
    import torch

    from qat_sweep.config.checks import config_problems
    from qat_sweep.model.transformer import compile_enabled

    train = plan_config([override])["train"]
    threads = torch.get_num_threads()
    try:
        compile_enabled(train["compile"], "cpu")
        if train["threads"]:
            torch.set_num_threads(int(train["threads"]))
        trainer_refuses = False
    except (ValueError, RuntimeError):
        trainer_refuses = True
    finally:
        torch.set_num_threads(threads)
    assert trainer_refuses == refused
    assert bool(config_problems(plan_config([override]))) == refused


# A string is override text (`tokens: 2M`, as `suggest` writes values); in a container it stays
# a string, and dicts are written in Hydra's grammar (JSON's {"k": v} does not parse).
VALUES = ["2M", "channel", "a\\b", 1e-3, None, True, 3, [0.9, 0.95], ["a b", "true", "a,b"]]
VALUES += [{"fraction": 0.1}, [{"max_steps": 9}], {"a": ["it's", "x=y", "é"]}]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_sweep_value_reaches_the_run_unchanged(value) -> None:
    """A sweep file's axis value, written as an override, is the value Hydra gives the run."""
    import json

    from qat_sweep.config.compose import parse_override
    from qat_sweep.sweep.spec import override_value

    parsed = parse_override(f"k={override_value(value)}").value()
    assert json.dumps(parsed) == json.dumps(value)  # 1 vs 1.0, "true" vs true differ


def test_hydra_launcher_setup_is_the_submitit_setup() -> None:
    """The two launch paths run the same setup lines, backslashes and quotes included."""
    from qat_sweep.config.compose import parse_override
    from qat_sweep.sweep.profiles import (
        executor_parameters,
        hydra_launcher_overrides,
        profile_from_dict,
    )

    setup = ["sed -e 's/\\./_/g' x", 'echo "$HOME" \\', "cd C:\\\\", "echo it\\'s"]
    profile = profile_from_dict("x", {"kind": "slurm", "setup": setup, "partition": "a,b"})
    given = dict(o.split("=", 1) for o in hydra_launcher_overrides(profile) if "=" in o)
    params = executor_parameters(profile)
    assert parse_override("k=" + given["hydra.launcher.setup"]).value() == params["slurm_setup"]
    assert parse_override("k=" + given["hydra.launcher.partition"]).value() == "a,b"


def test_an_axis_key_of_the_chosen_group_option_is_known(tmp_path, hydra_compose) -> None:
    """`data.paths` exists once data=npy is chosen (by the file or an axis): plan takes it."""
    from qat_sweep.sweep.plan import load_sweep
    from qat_sweep.sweep.spec import PlanError

    text = """overrides: [data=npy, data.vocab_size=512, data.eos_token_id=0, logger=none]
twins: false
subgrids:
  a: {model: 0.2M, tokens: 2M, "data.paths": [[/x/a.npy], [/x/b.npy]]}
  b: {model: 0.2M, tokens: 2M, data: npy, data.tokenizer: [x, y]}
"""
    (tmp_path / "npy_axes.yaml").write_text(text)
    runs = plan_sweep(str(tmp_path / "npy_axes.yaml"), strict=False)
    assert [r.config["data"]["paths"] for r in runs[:2]] == [["/x/a.npy"], ["/x/b.npy"]]
    for run in runs:
        assert hydra_compose(run.overrides).run_key == run.run_key
    (tmp_path / "typo.yaml").write_text("subgrids: {a: {model: 0.2M, data.pathz: [[a]]}}\n")
    with pytest.raises(PlanError, match=r"subgrids.a.data.pathz: unknown config key"):
        load_sweep(str(tmp_path / "typo.yaml"))


def test_hydra_sees_the_users_conf_as_plan_does(tmp_path, monkeypatch) -> None:
    """A preset in ./conf/model is found by Hydra (train, local launches) as by plan, also in an
    editable install, where Hydra's scan of the hydra_plugins package misses our plugin."""
    import qat_sweep.config.compose  # noqa: F401  (what train imports before Hydra starts)

    (tmp_path / "conf" / "model").mkdir(parents=True)
    preset = (CONF_DIR / "model" / "0.2M.yaml").read_text().replace("name: 0.2M", "name: tiny")
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text(preset)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            assert compose("train", overrides=["model=tiny"]).model.name == "tiny"
    finally:
        GlobalHydra.instance().clear()
    assert plan_config(["model=tiny"])["model"]["name"] == "tiny"
