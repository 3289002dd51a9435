"""The one reader of run records: every reader sees a record file the same way."""

from __future__ import annotations

import json
from pathlib import Path

from qat_sweep.record import RECORD_NAME, load_record, read_record, sweep_records


def _record(run_key: str) -> dict:
    return {
        "schema": 1, "run_key": run_key, "sweep": "s", "status": "completed", "error": None,
        "model": "0.2M", "n_params": 1, "n_params_total": 2, "hidden_size": 64, "tokens": 10,
        "scheme": "bf16", "format": "bf16", "group_size": None, "lr": 1e-3, "seed": 0,
        "loss": 3.0, "val_loss": 3.1, "metrics": {}, "config": {}, "versions": {},
        "slurm": None, "wandb": None,
    }  # fmt: skip


def _write(sweep_dir: Path, name: str, text: str) -> None:
    (sweep_dir / name).mkdir(parents=True)
    (sweep_dir / name / RECORD_NAME).write_text(text)


def test_a_record_file_is_valid_absent_unreadable_or_invalid(tmp_path: Path) -> None:
    _write(tmp_path, "ok", json.dumps(_record("ok")))
    _write(tmp_path, "torn", '{"schema": 1, "run_')
    _write(tmp_path, "nan", json.dumps({**_record("nan"), "loss": float("nan")}))
    (tmp_path / "started").mkdir()  # a run that has not written its record: not listed
    found = {f.run_dir.name: f for f in sweep_records(tmp_path)}
    assert list(found) == ["nan", "ok", "torn"]
    assert found["ok"].record == read_record(tmp_path / "ok") == _record("ok")
    assert found["ok"].problem is None and found["ok"].path == tmp_path / "ok" / RECORD_NAME
    assert found["torn"].record is None and found["torn"].problem.startswith("unreadable (")
    assert found["nan"].problem == "not a valid record (completed run with non-finite loss nan)"
    absent = load_record(tmp_path / "started")
    assert (absent.record, absent.problem) == (None, None)
