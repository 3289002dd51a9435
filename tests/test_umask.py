"""Every file the tool writes is as readable as the umask says: under 022 a collaborator on a
shared filesystem can run status and fit on a sweep, or train on a corpus someone prepared;
under 077 nobody else can read anything."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from qat_sweep.analysis.design.synth import synthetic_table, table_to_records

from qat_sweep.commands.fit import main as fit_main
from qat_sweep.commands.launch import main as launch_main
from qat_sweep.data.prepare.corpus import build_demo_corpus

SWEEP = """overrides: [data=demo, logger=none, train.threads=1, checkpoint.keep_on_success=true, checkpoint.every_steps=1]
twins: false
subgrids:
  a: {model: 0.2M, tokens: 4096, quant: bf16}
"""


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in root.rglob("*")
        if path.is_file()
    }


@pytest.mark.slow
def test_every_written_file_follows_the_umask(umask: int, tmp_path: Path, capsys) -> None:
    expected = 0o666 & ~umask  # 0644 under 022, 0600 under 077
    sweep, runs = tmp_path / "u.yaml", tmp_path / "runs"
    sweep.write_text(SWEEP)
    assert launch_main([f"sweep={sweep}", "launcher=local", f"paths.runs={runs}"]) == 0
    written = modes(runs)  # the record, metrics, checkpoint, Hydra's files, manifest, log
    assert any(name.endswith("result.json") for name in written)
    assert any(".launches/" in name and name.endswith(".json") for name in written)
    assert any("/checkpoint/" in name for name in written)

    corpus = build_demo_corpus(tmp_path / "corpus", max_bytes=60_000)
    written |= modes(corpus)  # token parts, their markers, tokenizer, manifest
    assert any(name.endswith(".npy") for name in written)

    records = tmp_path / "fit-runs" / "paper"
    bf16 = [
        r for r in table_to_records(synthetic_table(seed=1), sweep="paper") if r["scheme"] == "bf16"
    ]
    for record in bf16[:12]:  # the base law alone: a fit and its report in seconds
        (records / record["run_key"]).mkdir(parents=True)
        (records / record["run_key"] / "result.json").write_text(json.dumps(record))
    out = tmp_path / "report"
    argv = ["sweep=paper", f"paths.runs={records.parent}", "--out", str(out)]
    assert fit_main([*argv, "--bootstrap", "10", "--no-plots"]) == 0
    written |= modes(out)  # fit.json, report, table, bootstrap draws
    assert {"fit.json", "report.html", "runs.csv"} <= set(written)
    wrong = {name: oct(mode) for name, mode in written.items() if mode != expected}
    assert not wrong, f"not {oct(expected)} under umask {umask:03o}: {wrong}"
