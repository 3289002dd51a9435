"""``qat-sweep prepare`` as a SLURM job array (the script of docs/guide.md) on the loopback cluster."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from qat_sweep.data.prepare import text_corpus

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = """#!/bin/bash
#SBATCH --job-name=prepare --array=0-2 --cpus-per-task=1 --output={log}/%A_%a.out
{python} -m qat_sweep.cli prepare input={corpus} pattern='*.jsonl' out={out} vocab_size=300 \\
  part_mb=0.003 val_fraction=0.05 min_val_tokens=10 workers=1 \\
  shards=$SLURM_ARRAY_TASK_COUNT shard=$SLURM_ARRAY_TASK_ID
"""


def test_array_tasks_prepare_one_corpus(tmp_path: Path, slurm_cluster) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"text": f"doc {i} " + "gh ij kl " * (i % 9)}) for i in range(400)]
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")
    out, log = tmp_path / "array", tmp_path / "logs"
    log.mkdir()
    script = tmp_path / "prepare.sbatch"
    script.write_text(SCRIPT.format(log=log, python=sys.executable, corpus=corpus, out=out))
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).strip().split(";")[0]
    deadline = time.monotonic() + 180
    while slurm_cluster.run("squeue", "-h", "-j", job).strip():
        assert time.monotonic() < deadline, "array did not finish"
        time.sleep(0.5)
    logs = "\n".join(p.read_text() for p in sorted(log.iterdir()))
    assert len(list(log.iterdir())) == 3 and "task 2/3" in logs
    assert (out / "manifest.json").is_file(), logs
    single = text_corpus.prepare_text(
        [corpus], tmp_path / "single", vocab_size=300, pattern="*.jsonl", part_mb=0.003,
        val_fraction=0.05, min_val_tokens=10,
    )  # fmt: skip
    for path in [*sorted(single.rglob("*.npy")), single / "manifest.json"]:
        assert (out / path.relative_to(single)).read_bytes() == path.read_bytes(), path
