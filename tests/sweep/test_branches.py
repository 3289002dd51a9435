"""The tree of runs that branch, from the sweep file to the records: trunks and parents in the
plan, refusals of branches that would change a result, local launch order, and the
schedule-parity sweep (conf/sweep/schedules.yaml) at CPU size, trained end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from qat_sweep.analysis.collect import build_table, load_records, pair_deltas
from qat_sweep.analysis.pipeline import Settings, run_fit
from qat_sweep.analysis.report.analyses import schedule_comparison

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.plan import main as plan_main
from qat_sweep.config.compose import plan_config
from qat_sweep.config_dirs import load_yaml
from qat_sweep.model.presets import conf_dirs
from qat_sweep.record import read_record
from qat_sweep.sweep.branches import branch_problems, cycle_problems, parents_first
from qat_sweep.sweep.launch import to_launch
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.train.trainer import train_from_overrides

CPU = ["model=0.2M", "logger=none", "eval.batches=2", "eval.batch_seqs=8", "train.threads=1"]
CPU += ["optim.warmup_steps=2"]


def cpu_schedules(tmp_path: Path, demo_data: Path) -> str:
    """conf/sweep/schedules.yaml with its sub-grids and fractions, at CPU size: one N and G,
    D of 20 and 40 steps, two start fractions."""
    (shipped,) = [d / "sweep" / "schedules.yaml" for d in conf_dirs()[-1:]]
    sweep = load_yaml(shipped, ValueError)
    sweep["overrides"] = [*CPU, f"data.dir={demo_data}"]
    for axes in sweep["subgrids"].values():
        axes.update({"model": "0.2M", "tokens": [40960, 81920], "quant.group_size": 32})
    sweep["subgrids"]["qat_after_bf16"]["quant.start_fraction"] = [0.5, 0.8]
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in sweep.items() if not k.startswith("_")}))
    return str(path)


@pytest.mark.slow
def test_schedule_parity_sweep_trains_its_tree_on_cpu(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = cpu_schedules(tmp_path, demo_data)
    runs = plan_sweep(sweep, runs_root=tmp_path / "runs")
    by_key = {r.run_key: r for r in runs}
    trunks = [r for r in runs if r.subgrid == "trunks"]
    assert len(trunks) == 2  # one W4A4 and one BF16 trunk for the two D
    assert {r.branch_step for r in runs if r.subgrid == "wsd"} == {16, 32}  # 0.8 D
    late = [r for r in runs if r.subgrid == "qat_after_bf16"]
    assert {(r.tokens, r.branch_step) for r in late} == {
        (40960, 10), (40960, 16), (81920, 20), (81920, 32)
    }  # fmt: skip
    assert all(by_key[r.parent].scheme == "bf16" for r in late)  # their BF16 twins
    for trunk in trunks:
        assert trunk.config["checkpoint"]["branch_steps"] == [16, 32]
    assert plan_main([f"sweep={sweep}", f"paths.runs={tmp_path / 'runs'}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["run_key"], r["parent"], r["branch_step"]) for r in rows} == {
        (r.run_key, r.parent, r.branch_step) for r in runs
    }
    assert plan_main([f"sweep={sweep}", f"paths.runs={tmp_path / 'runs'}"]) == 0
    assert "as branched" in capsys.readouterr().out

    start, cpu = time.perf_counter(), time.process_time()
    for run in parents_first(runs):
        assert train_from_overrides(run.overrides)["status"] == "completed", run.run_key
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    for run in runs:  # every child started from its parent's checkpoint
        branched = read_record(run.run_dir)["metrics"]["branched_from"]
        assert branched == (run.parent and {"parent": run.parent, "step": run.branch_step})
    planned = plan_sweep(sweep, runs_root=tmp_path / "runs")
    assert {r.status for r in planned} == {"completed"} and to_launch(planned) == []
    table = pair_deltas(build_table(load_records(tmp_path / "runs" / "schedules")[0]))
    reasons = dict(zip(table["run_key"], table["excluded"], strict=True))
    assert all(reasons[t.run_key].startswith("WSD trunk") for t in trunks)  # not the law's
    quant = table[(table["scheme"] != "bf16") & ~table["trunk"]]
    assert set(quant["fit_key"]) == {
        "w4a4/int4", "w4a4/int4-wsd", "w4a4/int4-from0.5", "w4a4/int4-from0.8"
    }  # fmt: skip
    comparison = schedule_comparison(table)
    means = comparison["settings"]["w4a4/int4"]["mean_delta"]
    assert set(means) == {"cosine", "wsd", "cosine, BF16 to 0.5", "cosine, BF16 to 0.8"}
    # the fit pools the cosine settings over when QAT starts: the paper's law against D_fp_qat
    pooled = run_fit(table, [], Settings(bootstrap=0)).result["start_fractions"]
    assert list(pooled) == ["w4a4/int4"]  # (the WSD setting has one start fraction)
    assert {0.5, 0.8} <= set(pooled["w4a4/int4"]["start_fractions"])  # a gap <= 0 is left out
    assert set(pooled["w4a4/int4"]["laws"]) == {"paper", "D_fp_qat"}
    print(
        f"\nschedule parity on CPU: {len(runs)} runs, {wall:.1f} s ({cpu:.1f} s CPU): {comparison}"
    )


def plan_problem(tmp_path: Path, sweep: dict, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "overrides": CPU, **sweep}))
    capsys.readouterr()
    assert plan_main([f"sweep={path}"]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {
                "subgrids": {
                    "a": {"quant": "w4a4", "quant.group_size": 32, "quant.start_fraction": 1}
                }
            },
            "quant.start_fraction=1.0: the fraction of the steps trained in BF16",
        ),
        (
            {"subgrids": {"a": {"quant": "bf16", "quant.start_fraction": 0.5}}},
            "quant.start_fraction=0.5 with scheme bf16",
        ),
        (
            {"subgrids": {"a": {"tokens": 40960, "branch.parent": "x"}}},
            "subgrids.a: branch.parent is derived by plan",
        ),
        (
            {"overrides": ["checkpoint.branch_steps=[3]"], "subgrids": {"a": {"tokens": 40960}}},
            "overrides: checkpoint.branch_steps is derived by plan",
        ),
        (
            {"subgrids": {"a": {"branch": "decay", "tokens": 40960}}},
            "subgrids.a.branch: 'decay'; allowed: tokens",
        ),
        (
            {"subgrids": {"a": {"branch": "tokens", "tokens": [40960, 81920]}}},
            "need a WSD schedule (optim=adamw_wsd); these decay by cosine",
        ),
        (
            {
                "subgrids": {
                    "a": {"branch": "tokens", "optim": "adamw_wsd", "tokens": [20480, 81920]}
                }
            },
            "warm up for [1, 2] steps",
        ),
    ],
)
def test_bad_branches_are_refused_at_plan_time(
    sweep: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "overrides" in sweep:
        sweep = {**sweep, "overrides": [*CPU, *sweep["overrides"]]}
    err = plan_problem(tmp_path, sweep, capsys)
    assert message in err and "Traceback" not in err
    if "start_fraction=1.0" in message:
        assert "0.2M_D2M_w4a4_int4_g32" in err  # the run is named


def test_a_branch_that_would_change_the_result_is_refused() -> None:
    """The checks plan runs on every derived branch, on configs a sweep cannot produce."""
    bf16 = plan_config([*CPU, "tokens=40960"])
    late = plan_config([*CPU, "tokens=40960", "quant=w4a4", "quant.group_size=32",
                        "quant.start_fraction=0.5"])  # fmt: skip
    assert branch_problems(late, bf16, 10) == []
    beyond = branch_problems(late, bf16, 25)[0]
    assert "branch step 25 is outside the steps of its parent" in beyond and "(1..20)" in beyond
    (early,) = branch_problems(late, bf16, 12)  # quantized from step 10, two steps before
    assert "quantizes from step 10" in early
    other_lr = plan_config([*CPU, "tokens=40960", "optim.lr=1e-3"])
    (lr,) = branch_problems(late, other_lr, 10)
    assert f"differs from its parent {other_lr['run_key']} in more than" in lr
    longer = plan_config([*CPU, "tokens=81920"])
    assert any("cosine schedule depends on the run's length" in p
               for p in branch_problems(late, longer, 10))  # fmt: skip
    cycle = cycle_problems({"a": ("b", 1), "b": ("a", 1)})
    assert cycle and "a -> b -> a" in cycle[0]


@pytest.mark.slow
def test_failed_parent_holds_its_child_back_in_a_local_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "late.yaml"
    late = {"tokens": 40960, "quant": "w4a4", "quant.group_size": 32, "quant.start_fraction": 0.5}
    sweep.write_text(yaml.safe_dump({"overrides": CPU, "subgrids": {"late": late}}))
    # Passes planning, fails in the trainer: a vocabulary smaller than that of the corpus the
    # parent builds (a built one would be refused before any run).
    argv = [f"sweep={sweep}", "launcher=local", f"paths.runs={tmp_path / 'runs'}"]
    argv += [f"paths.data={tmp_path / 'data'}", "model.vocab_size=8"]
    (child,) = [r for r in plan_sweep(str(sweep), argv[3:]) if r.parent]
    assert launch_main(argv) == 1
    out = capsys.readouterr().out
    assert f"{child.run_key} held back: parent {child.parent} failed before step 10" in out
    assert "vocab" in out
    assert not child.run_dir.exists()  # never started
