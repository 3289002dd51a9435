"""``qat-sweep prepare``: text to token files in parts, in parallel, across array tasks, resumably."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from qat_sweep.commands import prepare
from qat_sweep.data.batches import open_data, val_batches
from qat_sweep.data.prepare import hf_corpus, text_corpus
from qat_sweep.data.prepare.corpus import build_demo_corpus
from qat_sweep.data.tokenfiles import read_manifest

DOCS = [
    f"Document {i}: the quick brown fox {i} jumps over the lazy dog.\n" * 40 + f"ZQX{i:03d}END"
    for i in range(30)
]


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "text"
    (root / "sub").mkdir(parents=True)
    for i, doc in enumerate(DOCS):
        (root / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(doc)
    (root / "ignored.md").write_text("not a .txt file")
    return root


def _splits(out: Path) -> tuple[np.ndarray, np.ndarray]:
    data = open_data({"name": "custom", "dir": str(out)})
    return data.train.read(0, len(data.train)), data.val.read(0, len(data.val))


def _files(out: Path) -> dict[str, bytes]:
    """Every file a preparation leaves (parts, markers, manifest, plan, tokenizer)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_prepare_text(tmp_path: Path) -> None:
    out = text_corpus.prepare_text(
        [_corpus(tmp_path)], tmp_path / "tok", vocab_size=300, val_fraction=0.1, min_val_tokens=10
    )
    train, val = _splits(out)
    manifest = read_manifest(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert manifest["vocab_size"] == tok.get_vocab_size() <= 300 and manifest["dtype"] == "uint16"
    assert int(max(train.max(), val.max())) < manifest["vocab_size"]
    for split in ("train", "val"):
        for entry in manifest["files"][split]:
            path = out / entry["path"]
            assert path.stat().st_size == 2 * entry["tokens"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    text = "def f(x):\n    return x ** 2  # ünïcode ✓"
    assert tok.decode(tok.encode(text).ids) == text
    # EOS after every document; every document lands in exactly one split, whole.
    eos = manifest["eos_token_id"]
    assert train[-1] == eos and val[-1] == eos
    assert (
        int((train == eos).sum() + (val == eos).sum())
        == len(DOCS)
        == sum(manifest["n_docs"].values())
    )
    train_text, val_text = tok.decode(train.tolist()), tok.decode(val.tolist())
    held_out = [i for i in range(len(DOCS)) if f"ZQX{i:03d}END" in val_text]
    for i in range(len(DOCS)):
        assert (f"ZQX{i:03d}END" in train_text) != (i in held_out)
    assert "not a .txt" not in train_text + val_text
    # Shuffled at the document level before the split: neither split keeps the corpus order,
    # and the held-out documents are not the first ones.
    order = [int(m[:3]) for m in train_text.split("ZQX")[1:]]
    assert order != sorted(order) and held_out != list(range(len(held_out)))
    # Validation windows are slices of the held-out documents' stream.
    windows = {tuple(val[w * 9 : w * 9 + 8].tolist()) for w in range(len(val) // 9)}
    assert all(tuple(row.tolist()) in windows for x, _ in val_batches(val, 8, 2) for row in x)


def test_prepare_is_deterministic_and_reuses_tokenizer(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    kw = {"val_fraction": 0.1, "min_val_tokens": 10}
    a = text_corpus.prepare_text([corpus], tmp_path / "a", vocab_size=300, **kw)
    b = text_corpus.prepare_text([corpus], tmp_path / "b", vocab_size=300, **kw)
    c = text_corpus.prepare_text([corpus], tmp_path / "c", tokenizer=a / "tokenizer.json", **kw)
    assert _files(a) == _files(b)
    for name in ("train/part-00000.npy", "val/part-00000.npy"):
        assert (a / name).read_bytes() == (c / name).read_bytes()


def test_prepare_refuses_tiny_or_single_document_corpus(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with pytest.raises(ValueError, match="too little for training"):
        text_corpus.prepare_text([corpus], tmp_path / "a", vocab_size=300)
    with pytest.raises(ValueError, match="no document could be held out"):
        text_corpus.prepare_text([corpus / "doc00.txt"], tmp_path / "b", vocab_size=300)


def test_jsonl_byte_ranges_keep_every_line_once(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": f"line {i} " + "ab cd ef " * (i % 7) + f"MARK{i:04d}"})
        for i in range(400)
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    out = text_corpus.prepare_text(
        [tmp_path / "docs.jsonl"], tmp_path / "tok", vocab_size=300, part_mb=0.003,
        val_fraction=0.05, min_val_tokens=10,
    )  # fmt: skip
    manifest = read_manifest(out)
    assert len(manifest["files"]["train"]) > 5  # the file was cut into many pieces
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "".join(tok.decode(split.tolist()) for split in _splits(out))
    assert sorted(int(m[:4]) for m in text.split("MARK")[1:]) == list(range(400))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path)
    out = tmp_path / "tok"
    args = [f"input={corpus}", f"out={out}", "vocab_size=300", "min_val_tokens=10"]
    assert prepare.main(args) == 0
    manifest = (out / "manifest.json").read_bytes()
    assert prepare.main(args) == 0  # the same command again: already complete, nothing redone
    assert (out / "manifest.json").read_bytes() == manifest
    assert prepare.main([*args, "vocab_size=280"]) == 2  # other settings: refused (a user error)
    assert "force=true" in capsys.readouterr().err
    assert prepare.main([*args, "vocab_size=280", "force=true"]) == 0
    assert read_manifest(out)["vocab_size"] <= 280
    assert prepare.main([f"input={corpus}", f"out={out}", "vocab=300"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'vocab'" in err and "vocab_size" in err
    assert prepare.main([f"out={out}"]) == 2
    assert "missing required key(s): input" in capsys.readouterr().err
    assert prepare.main(["hf", "dataset=x"]) == 2
    capsys.readouterr()
    assert prepare.main(["check", "data=custom", f"data.dir={out}"]) == 0  # every token id
    assert "every token id checked" in capsys.readouterr().out
    part = out / "train" / "part-00000.npy"
    part.write_bytes(part.read_bytes()[:-2] + b"\xff\xff")  # id 65535 in the last token
    assert prepare.main(["check", "data=custom", f"data.dir={out}"]) == 2
    assert "id 65535 at token" in capsys.readouterr().err


def test_hf_without_extras_explains_install(tmp_path: Path) -> None:
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'qat-sweep\[hf\]'"):
            hf_corpus.prepare_hf(
                "allenai/olmo-mix-1124", "allenai/OLMo-2-1124-7B", tmp_path, max_tokens=10
            )
    else:
        pytest.skip("datasets and transformers are installed")


@pytest.mark.slow
def test_hf_dataset_parts_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `hf` path on a local dataset directory and tokenizer (runs where `[hf]` is installed)."""
    pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = tmp_path / "dataset"
    corpus.mkdir()
    for f in range(4):  # four source files: the dataset's four shards, one per part
        docs = [
            {"text": f"file {f} doc {i} " + "lorem ipsum " * (i % 13) + f"M{f}_{i}Z"}
            for i in range(300)
        ]
        (corpus / f"part{f}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    bpe = text_corpus.train_bpe((d["text"] for d in docs), 300)
    (tmp_path / "tokenizer.json").write_text(bpe.to_str())
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token=text_corpus.EOS_TOKEN
    ).save_pretrained(tmp_path / "hf-tokenizer")
    outs = [
        hf_corpus.prepare_hf(
            str(corpus), str(tmp_path / "hf-tokenizer"), tmp_path / f"out{k}", max_tokens=10**6,
            parts=4, workers=k, val_fraction=0.05, min_val_tokens=100,
        )
        for k in (1, 2)
    ]  # fmt: skip
    assert _files(outs[0]) == _files(outs[1])
    text = "".join(bpe.decode(split.tolist()) for split in _splits(outs[0]))
    marks = [m.split("Z")[0] for m in text.split("M")[1:]]
    assert sorted(marks) == sorted(f"{f}_{i}" for f in range(4) for i in range(300))


# ---- parallel, sharded, resumable ----------------------------------------------------------


@dataclass(frozen=True)
class BigCorpus:
    text: Path
    tokenizer: Path

    def args(self, out: Path, *extra: str, text: Path | None = None) -> list[str]:
        """`prepare`'s words for this corpus (or the ``text`` subset of it) into ``out``."""
        return [
            f"input={text or self.text}", f"out={out}", f"tokenizer={self.tokenizer}",
            "pattern=*.jsonl", "part_mb=0.05", "val_fraction=0.01", "min_val_tokens=1000", *extra,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> BigCorpus:
    """40 .jsonl files of 50 documents (~100 KB) of varied words, and a BPE trained on a few."""
    root = tmp_path_factory.mktemp("big")
    (root / "text").mkdir()
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 9))) for _ in range(800)]
    for i in range(40):
        docs = [{"text": " ".join(rng.choice(words, rng.integers(100, 540)))} for _ in range(50)]
        (root / "text" / f"f{i:02d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tok = text_corpus.train_bpe(
        text_corpus.iter_documents(sorted((root / "text").glob("f0*"))), 400
    )
    (root / "tokenizer.json").write_text(tok.to_str())
    return BigCorpus(root / "text", root / "tokenizer.json")


@pytest.mark.slow
def test_two_workers_and_two_array_tasks_write_the_same_parts_as_one(
    big_corpus: BigCorpus, tmp_path: Path
) -> None:
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in sorted(big_corpus.text.glob("f1*")):  # 10 files: about 10 parts
        (subset / p.name).write_bytes(p.read_bytes())
    assert prepare.main(big_corpus.args(tmp_path / "one", text=subset)) == 0
    assert prepare.main(big_corpus.args(tmp_path / "two", "workers=2", text=subset)) == 0
    one = _files(tmp_path / "one")
    n_parts = len([k for k in one if k.startswith("train/")])
    assert n_parts >= 8
    assert _files(tmp_path / "two") == one
    array = tmp_path / "array"
    assert prepare.main(big_corpus.args(array, "shards=2", "shard=1", text=subset)) == 0
    assert not (array / "manifest.json").exists()  # task 0 has not run yet
    assert sorted(p.name for p in (array / "done").iterdir()) == [
        f"part-{i:05d}.json" for i in range(1, n_parts, 2)
    ]
    assert prepare.main(big_corpus.args(array, "shards=2", "shard=0", text=subset)) == 0
    assert _files(array) == one


@pytest.mark.slow
def test_killed_prepare_resumes_byte_identical(big_corpus: BigCorpus, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert prepare.main(big_corpus.args(reference)) == 0
    n_parts = len(list((reference / "done").iterdir()))
    assert n_parts >= 30
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "qat_sweep.cli", "prepare", *big_corpus.args(killed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((killed / "done").glob("*.json"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = {p.name: p.stat().st_mtime_ns for p in (killed / "done").iterdir()}
    assert 3 <= len(done_before) < n_parts and not (killed / "manifest.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} already complete; writing {n_parts - len(done_before)}" in (
        resumed.stderr
    )
    after = {p.name: p.stat().st_mtime_ns for p in (killed / "done").iterdir()}
    assert all(after[name] == stamp for name, stamp in done_before.items())  # not rewritten
    assert not [p for p in killed.rglob(".*tmp-*")]  # the torn part's temporary file is gone
    assert _files(killed) == _files(reference)


# ---- demo corpus ----------------------------------------------------------------------------


def test_demo_corpus_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = build_demo_corpus(tmp_path / "a", vocab_size=300, max_bytes=150_000)
    b = build_demo_corpus(tmp_path / "b", vocab_size=300, max_bytes=150_000)
    assert _files(a) == _files(b)
    meta = read_manifest(a)
    assert meta["demo"]["max_bytes"] == 150_000 and meta["vocab_size"] == 300
    stamp = (a / "manifest.json").stat().st_mtime_ns
    build_demo_corpus(a, vocab_size=300, max_bytes=150_000)
    assert (a / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    build_demo_corpus(a, vocab_size=260, max_bytes=150_000)
    assert read_manifest(a)["vocab_size"] == 260  # other settings: rebuilt


@pytest.mark.slow
def test_default_demo_corpus_size_and_build_time(tmp_path: Path) -> None:
    start = time.monotonic()
    out = build_demo_corpus(tmp_path / "demo")
    assert time.monotonic() - start < 60
    manifest = read_manifest(out)
    assert manifest["vocab_size"] == 512 and len(manifest["files"]["train"]) == 8
    assert 3_000_000 <= sum(manifest["n_tokens"].values()) <= 5_000_000
    assert manifest["n_tokens"]["val"] >= 8 * 513
