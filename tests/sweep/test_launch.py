"""Local launcher (no SLURM): each run in its own process, idempotent relaunch, failures reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qat_sweep.analysis.collect import load_records

from qat_sweep.commands.launch import main as launch_main
from qat_sweep.commands.status import main as status_main
from qat_sweep.config.compose import twin_key
from qat_sweep.record import IDENTITY_FIELDS, read_record
from qat_sweep.sweep.launch import twins_first
from qat_sweep.sweep.plan import plan_sweep

TINY = """
overrides: [data=demo, logger=none, train.threads=1]
twins: {twins}
subgrids:
  a:
    model: 0.2M
    tokens: 4096
    quant: {quant}
{group}"""


def tiny_sweep(tmp_path: Path, name: str, quant: str = "w4a4", twins: bool = True) -> str:
    path = tmp_path / f"{name}.yaml"
    group = "" if quant == "bf16" else "    quant.group_size: 16\n"
    path.write_text(TINY.format(quant=quant, twins=str(twins).lower(), group=group))
    return str(path)


def run_status(
    sweep: str, runs: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> list[dict]:
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", f"paths.runs={runs}", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_local_launch_runs_then_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, runs = tiny_sweep(tmp_path, "loc"), tmp_path / "runs"
    argv = [f"sweep={sweep}", "launcher=local", f"paths.runs={runs}"]
    assert launch_main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out and "completed loss" in out
    # the BF16 twin runs first: the quantized run finishes second and prints its delta
    first, second = [line for line in out.splitlines() if line.startswith("[")]
    assert "_bf16_" in first and "_w4a4_" in second
    [delta] = [line for line in out.splitlines() if line.strip().startswith("delta ")]
    assert " - BF16 " in delta and "_w4a4_" in delta
    assert "local launch done in " in out and ": 2 completed, 0 failed" in out
    rows = run_status(sweep, runs, capsys)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    records = [read_record(Path(r["run_dir"])) for r in rows]
    assert all(record["status"] == "completed" for record in records)
    # one derivation of the identity fields: the plan's row, the record and the table's row agree
    table_rows = {row["run_key"]: row for row in load_records(runs / "loc")[0]}
    for row, record in zip(rows, records, strict=True):
        identity = {field: record[field] for field in IDENTITY_FIELDS}
        assert identity["hidden_size"] and identity["n_params"]
        assert {field: row[field] for field in IDENTITY_FIELDS} == identity
        assert {field: table_rows[row["run_key"]][field] for field in IDENTITY_FIELDS} == identity
    assert launch_main(argv) == 0
    assert "launching 0" in capsys.readouterr().out
    manifests = list((runs / "loc" / ".launches").glob("*.json"))
    assert len(manifests) == 1  # the second launch had nothing to do


@pytest.mark.slow
def test_failing_local_run_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, runs = tiny_sweep(tmp_path, "fail", quant="bf16", twins=False), tmp_path / "runs"
    # Passes planning, fails in training: a vocabulary smaller than the data's.
    argv = [f"sweep={sweep}", "launcher=local", f"paths.runs={runs}", "model.vocab_size=8"]
    assert launch_main(argv) == 1
    out = capsys.readouterr().out
    assert "[1/1]" in out and "0 completed, 1 failed, by reason:" in out
    assert "    1x failed: " in out  # grouped by reason, one line
    (row,) = run_status(sweep, runs, capsys, "model.vocab_size=8")
    assert row["status"] == "failed" and "vocab" in row["error"]
    assert row["log"].endswith(".log") and Path(row["log"]).exists()
    capsys.readouterr()
    assert status_main([f"sweep={sweep}", f"paths.runs={runs}", "model.vocab_size=8"]) == 0
    text = capsys.readouterr().out
    assert "failed 1" in text and "failed (1), by reason; rerun them with:" in text
    assert f"qat-sweep launch sweep={sweep} paths.runs={runs} model.vocab_size=8" in text
    assert (
        status_main([f"sweep={sweep}", f"paths.runs={runs}", "model.vocab_size=8", "--runs"]) == 0
    )
    assert "failed runs:" in (text := capsys.readouterr().out) and "log:" in text


def test_a_diverged_run_is_not_relaunched_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun resumes the same run onto the same batches: it would diverge again."""
    sweep, runs = tiny_sweep(tmp_path, "div", quant="bf16", twins=False), tmp_path / "runs"
    argv = [f"sweep={sweep}", "launcher=local", f"paths.runs={runs}", "train.max_loss=0.5"]
    assert launch_main(argv) == 1  # the first loss (about ln V) is above the limit
    (row,) = run_status(sweep, runs, capsys, "train.max_loss=0.5")
    assert row["status"] == "failed" and row["error"].startswith("diverged: ")
    capsys.readouterr()
    assert launch_main(argv) == 0
    out = capsys.readouterr().out
    assert "launching 0" in out and "1 diverged run(s) not relaunched" in out
    assert launch_main([*argv, "--retry-diverged"]) == 1
    assert "launching 1" in capsys.readouterr().out


def test_bad_launch_input_submits_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, runs = tiny_sweep(tmp_path, "bad"), tmp_path / "runs"
    assert launch_main([f"sweep={sweep}", "launcher=nope", f"paths.runs={runs}"]) == 2
    assert "unknown launch profile 'nope'" in capsys.readouterr().err
    assert launch_main([f"sweep={sweep}", "launcher=local", "quant.group_size=48"]) == 2
    err = capsys.readouterr().err
    assert "group size 48" in err and "nothing was launched" in err
    assert not runs.exists()


def test_print_hydra_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch_main(["sweep=demo", "launcher=local", "--print-hydra-overrides"]) == 0
    assert "hydra/launcher=submitit_local" in capsys.readouterr().out


def test_local_order_puts_each_bf16_twin_before_its_quantized_runs() -> None:
    runs = twins_first(plan_sweep("demo", strict=False))
    assert runs[0].scheme == "bf16" and runs[0].model == "0.04M" and runs[0].tokens == 250_000
    position = {r.run_key: i for i, r in enumerate(runs)}
    for run in runs:
        if run.scheme != "bf16":
            assert position[twin_key(run.config)] < position[run.run_key]
    # cell by cell: the first delta needs two runs, not the whole sweep
    assert [r.scheme for r in runs[:4]] == ["bf16", "w4a4", "w4a4", "w4a4"]
