"""Sweep expansion and validation (no SLURM): the paper grid, twins, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qat_sweep.commands.args import parse_cli
from qat_sweep.commands.plan import main as plan_main
from qat_sweep.config.compose import compose_run, run_key
from qat_sweep.model.presets import CONF_DIR
from qat_sweep.sweep.plan import load_sweep, plan_sweep
from qat_sweep.sweep.profiles import (
    LaunchProfile,
    available_profiles,
    executor_parameters,
    hydra_launcher_overrides,
    load_profile,
    profile_from_dict,
    profile_path,
)
from qat_sweep.sweep.spec import PlanError

PAPER_SUBGRIDS = {
    "main_int4": 240,
    "fp4_297m_50b": 5,
    "fc2a8_595m_100b": 10,
    "validation_973m": 10,
    "lr_sweep_145m": 3,
    "bf16_twins": 21,
}


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> list:
    return plan_sweep("paper", runs_root=tmp_path_factory.mktemp("runs"), strict=False)


def write_sweep(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return str(path)


def test_paper_grid_counts(paper: list) -> None:
    assert Counter(r.subgrid for r in paper) == PAPER_SUBGRIDS
    assert sum(r.scheme != "bf16" for r in paper) == 268
    assert len(paper) == 289
    assert len({r.run_key for r in paper}) == 289
    assert all(r.status == "missing" for r in paper)


def test_paper_twins_cover_every_quantized_cell(paper: list) -> None:
    def cell(r):
        return (r.model, r.tokens, r.lr, r.seed)

    bf16 = Counter(cell(r) for r in paper if r.scheme == "bf16")
    assert all(n == 1 for n in bf16.values())
    assert {cell(r) for r in paper if r.scheme != "bf16"} == set(bf16)
    assert {r.group_size for r in paper if r.subgrid == "main_int4"} == {
        32,
        64,
        128,
        256,
        "channel",
    }


def test_paper_rows_compose_back_to_their_run_key(paper: list) -> None:
    for run in paper:
        assert "sweep_name=paper" in run.overrides
        assert run_key(compose_run(run.overrides)) == run.run_key
        assert run.row()["group_size"] == (None if run.scheme == "bf16" else run.group_size)


def test_plan_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main(["sweep=demo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"run_key", "model", "n_params", "tokens", "scheme", "format", "group_size", "lr"}
    assert keys | {"seed", "status", "overrides", "subgrid", "flops", "gpu_hours"} <= set(rows[0])
    assert {r["model"] for r in rows} == {"0.04M", "0.07M", "0.15M"}
    assert {r["scheme"] for r in rows} == {"bf16", "w4a4"}
    assert {r["format"] for r in rows} == {"bf16", "int4", "fp4"}
    for row in rows:  # flops is the paper's 6ND; GPU-hours come from the model count
        assert row["flops"] == 6 * row["n_params"] * row["tokens"]
        assert row["model_flops"] > row["flops"]  # + lm_head and attention
        assert row["gpu_hours"] == pytest.approx(row["model_flops"] / (0.4 * 312e12 * 3600))


def test_plan_summary_fits_100_columns_and_runs_lists_every_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert plan_main(["sweep=paper", "launcher=a100-80gb", "mfu=0.5", "peak_tflops=100"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    assert "289 runs (268 quantized + 21 BF16)" in out and "at mfu=0.5 x 100 TFLOP/s" in out
    lines = out.splitlines()
    # one row per model and per sub-grid, with runs, tokens, GPU-hours, share and sizing
    [row] = [line for line in lines if line.startswith("973M ")]
    assert row.split()[1:4] == ["973M", "12", "100B"] and "16" in row.split()  # 2 nodes x 8
    [row] = [line for line in lines if line.startswith("bf16_twins ")]
    assert row.split()[1:3] == ["21", "21"] and row.endswith("missing 21")
    shares = [float(w[:-1]) for line in lines for w in line.split() if w.endswith("%")]
    assert sum(shares) == pytest.approx(200, abs=0.5)  # models, then sub-grids: 100 % each
    # each FLOP count is named: 6ND for the law, the model count for GPU-hours
    assert " FLOPs(6ND) " in out and "the model FLOPs train's MFU counts" in out
    assert "qat-sweep plan sweep=paper launcher=a100-80gb mfu=0.5 peak_tflops=100 --runs" in out

    assert plan_main(["sweep=demo", "--runs"]) == 0
    out = capsys.readouterr().out
    assert "## w4a4_int4: 27 runs" in out and "## bf16_twins: 9 runs" in out
    assert sum(" missing" in line for line in out.splitlines()) == 42


def test_unknown_sweep_lists_available() -> None:
    with pytest.raises(PlanError, match=r"unknown sweep 'nope'.*demo.*paper"):
        plan_sweep("nope")


def test_sweep_file_keys_are_checked(tmp_path: Path) -> None:
    bad_top = write_sweep(tmp_path, "t1", "subgrids: {a: {model: 0.2M}}\nextra: 1\n")
    with pytest.raises(PlanError, match=r"t1.yaml: unknown key\(s\) \['extra'\]"):
        load_sweep(bad_top)
    empty = write_sweep(tmp_path, "t2", "subgrids: {a: {model: []}}\n")
    with pytest.raises(PlanError, match=r"t2.yaml: subgrids.a.model: empty axis"):
        load_sweep(empty)
    unknown_key = write_sweep(tmp_path, "t3", "subgrids: {a: {model: 0.2M, optim.lrr: 1}}\n")
    with pytest.raises(PlanError, match=r"t3.yaml: subgrids.a.optim.lrr: unknown config key"):
        load_sweep(unknown_key)


def test_bad_runs_are_all_reported_with_allowed_values(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "bad",
        """
overrides: [data=demo, logger=none]
subgrids:
  g:
    model: 0.2M
    tokens: 8192
    quant: w4a4
    quant.group_size: [16, 48]
  preset:
    model: 7B
    quant: w4a4
  scheme:
    model: 0.2M
    quant: w3a3
  fmt:
    model: 0.2M
    quant: w4a4
    quant.format: int3
    quant.group_size: 16
  short:
    model: 0.2M
    tokens: 100
""",
    )
    with pytest.raises(PlanError) as err:
        plan_sweep(sweep, runs_root=tmp_path / "runs")
    message = str(err.value)
    assert "5 problem(s)" in message and "nothing was launched" in message
    assert "g 0.2M_D8.192K_w4a4_int4_g48" in message and "allowed: 2, 4, 8, 16, 32, 64" in message
    assert "model/7B" in message and "model presets: " in message
    assert "quant/w3a3" in message and "schemes: bf16" in message
    assert "unknown format 'int3'" in message
    assert "tokens=100 is smaller than one global batch" in message


def test_duplicate_runs_are_rejected(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "dup",
        """
overrides: [data=demo]
subgrids:
  a: {model: 0.2M, tokens: 8192, quant: w4a4, quant.group_size: 16}
  b: {model: 0.2M, tokens: 8192, quant: w4a4, quant.group_size: [16, 32]}
""",
    )
    with pytest.raises(
        PlanError, match=r"duplicate run 0.2M_D8.192K_w4a4_int4_g16.*\(sub-grids: a, b\)"
    ):
        plan_sweep(sweep, runs_root=tmp_path / "runs")


def test_missing_data_blocks_launch_but_not_plan(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path, "nodata", "overrides: [data=custom]\nsubgrids: {a: {model: 0.2M, tokens: 8192}}\n"
    )
    extra = [f"paths.data={tmp_path / 'nowhere'}"]
    assert len(plan_sweep(sweep, extra, runs_root=tmp_path, strict=False)) == 1
    with pytest.raises(PlanError, match=r"a 0.2M_D8.192K_bf16.*data 'custom'.*is not prepared"):
        plan_sweep(sweep, extra, runs_root=tmp_path)


def test_profiles_validate_and_map_to_hydra_launcher() -> None:
    with pytest.raises(
        ValueError, match=r"unknown launch profile 'nope'.*a100-80gb, ci, h100-80gb, local, slurm"
    ):
        load_profile("nope")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gpus'\]"):
        profile_from_dict("x", {"kind": "slurm", "gpus": 2})
    with pytest.raises(ValueError, match="cpus_per_task must be >= 1"):
        profile_from_dict("x", {"kind": "slurm", "cpus_per_task": 0})
    two_gpus = profile_from_dict("two", {"kind": "slurm", "gpus_per_node": 2, "setup": ["echo hi"]})
    overrides = hydra_launcher_overrides(two_gpus)
    assert "hydra.launcher.tasks_per_node=2" in overrides
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node == 2 and launcher.tasks_per_node == 2
    assert launcher.setup == ["echo hi"] and launcher.additional_parameters == {"requeue": True}
    assert "SlurmLauncher" in launcher._target_
    ci = hydra_launcher_overrides(load_profile("ci"))
    assert "hydra.launcher.partition='debug'" in ci and "train.device=cpu" in ci


def test_shipped_profiles_load_as_the_dataclass_their_yaml_describes() -> None:
    for name in available_profiles():
        raw = yaml.safe_load(profile_path(name).read_text())
        direct = LaunchProfile(name=name, **raw)  # no schema in between
        assert load_profile(name) == direct
        assert executor_parameters(load_profile(name)) == executor_parameters(direct)


def test_profile_type_problems_name_key_value_and_type() -> None:
    bad = {"kind": "slurm", "nodes": True, "setup": "echo hi", "env": ["A=1"], "mem_gb": "lots"}
    with pytest.raises(ValueError) as error:
        profile_from_dict("x", bad, source="x.yaml")
    assert str(error.value) == (
        "x.yaml: nodes must be int, got True; setup must be list[str], got 'echo hi'; "
        "env must be dict[str, str], got ['A=1']; mem_gb must be float | None, got 'lots'"
    )
    for raw, message in [
        ({"kind": "slurm", "timeout_min": 60.0}, "timeout_min must be int, got 60.0"),
        ({"kind": "slurm", "requeue": "maybe"}, "requeue must be bool, got 'maybe'"),
        ({"kind": "slurm", "resources": [3]}, "resources must be list[dict[str, Any]], got [3]"),
        ({"nodes": 2}, "x.yaml: missing key(s) ['kind']"),
        ({"kind": "slurm", "name": "y"}, "name='y': a profile is named by its file ('x')"),
        ({"kind": "slurm", "gpu": 1}, "unknown key(s) ['gpu']; allowed: name, kind, max_parallel"),
    ]:
        with pytest.raises(ValueError, match=r"^x\.yaml: ") as error:
            profile_from_dict("x", raw, source="x.yaml")
        assert message in str(error.value)
    literal = profile_from_dict("x", {"kind": "slurm", "setup": ["echo ${HOME}"], "env": {"A": 1}})
    assert literal.setup == ["echo ${HOME}"] and literal.env == {"A": "1"}  # kept, not resolved


def test_profile_value_problems_are_all_listed() -> None:
    raw = {"kind": "cloud", "nodes": 0, "signal_delay_s": -1, "mem_gb": 0, "wandb_mode": "on"}
    raw |= {"gpu_type": "V100", "resources": [{"models": ["74M"], "gpus_per_node": -1}]}
    with pytest.raises(ValueError) as error:
        profile_from_dict("x", raw, source="x.yaml")
    assert str(error.value).startswith("x.yaml: kind must be one of ['local', 'slurm']")
    for problem in [
        "nodes must be >= 1, got 0",
        "signal_delay_s must be >= 0, got -1",
        "mem_gb must be a positive number or null, got 0.0",
        "wandb_mode must be one of",
        "gpu_type='V100' is not a known GPU",
        "resources[0].gpus_per_node must be an integer >= 0, got -1",
    ]:
        assert problem in str(error.value)


def test_paper_holdout_is_the_973m_validation_cells_and_their_twins() -> None:
    from qat_sweep.sweep.plan import holdout_keys

    keys = holdout_keys("paper")
    assert len(keys) == 12  # 2 D x 5 G W4A4 runs + 2 BF16 twins
    assert all(k.startswith("973M_") for k in keys)
    assert sum("_bf16_" in k for k in keys) == 2


def test_sweep_command_line_splits_into_sweep_options_flags_and_train_overrides() -> None:
    argv = ["launcher=local", "sweep=demo", "--watch=30", "tokens=2M", "mfu=0.5", "--json"]
    argv += ["quant.group_size=[32,64]", "~logger"]
    sweep, options, flags, overrides = parse_cli(argv, ("--json", "--watch"))
    assert (sweep, flags) == ("demo", {"--json", "--watch"})
    assert options == {"launcher": "local", "mfu": "0.5", "--watch": "30"}
    assert overrides == ["tokens=2M", "quant.group_size=[32,64]", "~logger"]
    with pytest.raises(PlanError, match=r"unknown option '--dry-run'; options: --json"):
        parse_cli(["sweep=demo", "--dry-run"], ("--json",))
    with pytest.raises(PlanError, match=r"missing sweep=NAME; available sweeps: .*demo"):
        parse_cli(["tokens=2M"], ())


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=0.2M", "tokens=2M", "quant=w4a4", "quant.group_size=64"],
        ["model=0.2M", "+model.dropout=0.1"],  # a key added to the chosen option
        ["+quant.note=x", "quant=w4a16"],
        ["~data.check", "data=custom", "seed=3"],  # data is open: a key may go
        ["data=demo", "optim=adamw_wsd", "optim.lr=1e-3"],
    ],
)
def test_fast_composition_is_hydras(overrides: list[str]) -> None:
    """plan composes without Hydra where it can: it must give the config `train` gets."""
    fast = OmegaConf.to_container(compose_run(overrides))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            hydra = OmegaConf.to_container(compose("train", overrides=overrides))
    finally:
        GlobalHydra.instance().clear()
    assert fast == hydra
