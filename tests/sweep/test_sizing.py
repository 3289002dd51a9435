"""A BF16 run and its quantized twins are sized as one family: same GPUs, parallelism and
micro-batch, so delta carries quantization and not a difference of execution."""

from __future__ import annotations

from collections import defaultdict

from qat_sweep.config.compose import twin_key
from qat_sweep.sweep.plan import plan_sweep
from qat_sweep.sweep.profiles import load_profile
from qat_sweep.sweep.sizing import size_run, size_sweep


def _execution(run) -> tuple:
    return run.sizing.gpus, run.sizing.parallelism, run.sizing.micro_batch_seqs


def test_twin_families_share_one_execution_on_the_paper_grid() -> None:
    profile = load_profile("a100-80gb")
    runs = plan_sweep("paper", profile.train_overrides(), strict=False)
    size_sweep(runs, profile, 0.4)
    families = defaultdict(set)
    for run in runs:
        families[run.run_key if run.scheme == "bf16" else twin_key(run.config)].add(_execution(run))
    assert len(families) == sum(r.scheme == "bf16" for r in runs)
    assert all(len(executions) == 1 for executions in families.values()), families
    # Sized alone, some quantized run would take another micro-batch than its twin: the
    # family rule is what makes them agree.
    alone = {
        r.run_key: size_run(r.config, profile.for_run(r.model, r.subgrid), 0.4).micro_batch_seqs
        for r in runs
    }
    assert any(alone[r.run_key] != r.sizing.micro_batch_seqs for r in runs)
    for run in runs:  # the overrides the trainer gets say the same
        assert f"train.micro_batch_seqs={run.sizing.micro_batch_seqs}" in run.overrides


def test_a_relaunched_run_is_sized_as_its_completed_twin_ran() -> None:
    profile = load_profile("a100-80gb")
    runs = plan_sweep("paper", profile.train_overrides(), strict=False)
    size_sweep(runs, profile, 0.4)
    sized = {r.run_key: _execution(r) for r in runs}
    # a quantized run that, sized alone, would run otherwise than its twin
    rerun = next(
        r
        for r in plan_sweep("paper", profile.train_overrides(), strict=False)
        if r.scheme != "bf16"
        and size_run(r.config, profile.for_run(r.model, r.subgrid), 0.4).micro_batch_seqs
        != sized[r.run_key][2]
    )
    size_sweep([rerun], profile, 0.4, sweep_runs=runs)
    assert _execution(rerun) == sized[twin_key(rerun.config)]
