"""A run another sweep completed under the same run key is copied with its provenance, not
retrained."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import completed_record

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.common import write_json_atomic
from qat_sweep.record import METRICS_NAME, RECORD_NAME, read_record
from qat_sweep.sweep.plan import plan_sweep

TINY = """
overrides: [data=demo, logger=none, train.threads=1]
subgrids:
  a: {model: 0.2M, tokens: 4096, quant: w4a4, quant.group_size: 16}
"""


def test_a_run_completed_in_another_sweep_is_copied_not_retrained(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(TINY)
    new.write_text(TINY)
    extra = [f"paths.runs={root}", f"paths.data={demo_data.parent}"]
    for run in plan_sweep(str(old), extra, strict=False):  # done earlier, by another sweep
        run.run_dir.mkdir(parents=True)
        write_json_atomic(run.run_dir / RECORD_NAME, completed_record(run, 5.0))
        (run.run_dir / METRICS_NAME).write_text('{"step": 1, "loss": 5.0}\n')
    argv = [f"sweep={new}", "launcher=local", *extra]
    assert launch_main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would reuse 2 run(s)" in out and "launching 0" in out
    assert not (root / "new").exists()
    assert launch_main(argv) == 0
    out = capsys.readouterr().out
    assert "reused 2 run(s)" in out and "launching 0" in out  # no training at all
    for run in plan_sweep(str(new), extra, strict=False):
        assert run.status == "completed"
        record = read_record(run.run_dir)
        assert record["sweep"] == "new" and record["subgrid"] == run.subgrid and not record["wandb"]
        assert record["reused_from"]["run_dir"] == str(root / "old" / run.run_key)
        assert record["reused_from"]["sweep"] == "old"
        assert (run.run_dir / METRICS_NAME).read_text() == '{"step": 1, "loss": 5.0}\n'
