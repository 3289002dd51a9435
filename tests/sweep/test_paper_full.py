"""`paper_full` keeps every run of `paper` and adds what identifies all of Table 1."""

from __future__ import annotations

from collections import defaultdict

from qat_sweep.sweep.plan import plan_sweep


def test_paper_full_keeps_the_paper_grid_and_spreads_fc2a8_and_fp4_over_cells() -> None:
    paper = {r.run_key: r for r in plan_sweep("paper", strict=False)}
    full = {r.run_key: r for r in plan_sweep("paper_full", strict=False)}
    assert set(paper) <= set(full)
    assert {k for k, r in full.items() if r.config["holdout"]} == {
        k for k, r in paper.items() if r.config["holdout"]
    }
    cells = defaultdict(set)
    groups = defaultdict(set)
    for run in full.values():
        setting = f"{run.scheme}/{run.format}"
        cells[setting].add((run.model, run.tokens))
        groups[setting].add(run.group_size)
    for setting in ("w4a4_fc2a8/int4", "w16a4_fc2a8/int4", "w4a4/fp4"):
        models = {m for m, _ in cells[setting]}
        tokens = {d for _, d in cells[setting]}
        assert len(cells[setting]) >= 4 and len(models) >= 2 and len(tokens) >= 2, setting
        assert len(groups[setting]) >= 2
    bf16_models = {r.model for r in full.values() if r.scheme == "bf16" and not r.config["holdout"]}
    assert {"145M", "297M", "595M", "973M", "2.8B"} <= bf16_models  # Appendix C's range
