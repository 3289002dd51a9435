"""Token data format, deterministic batching, text preparation and the demo corpus."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from qat_sweep import prepare
from qat_sweep.corpus import build_demo_corpus
from qat_sweep.data import (
    BatchSchedule,
    load_token_data,
    token_dtype,
    val_batches,
    write_token_data,
)


def _write(tmp_path: Path, n_train: int = 1000, n_val: int = 200, vocab: int = 100) -> Path:
    rng = np.random.default_rng(0)
    return write_token_data(
        tmp_path / "tok",
        rng.integers(0, vocab, n_train),
        rng.integers(0, vocab, n_val),
        vocab_size=vocab,
        eos_id=0,
        tokenizer="test",
        source=["unit test"],
    )


# ---- format ---------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    train = np.arange(1000) % 97
    val = np.arange(300) % 89
    out = write_token_data(
        tmp_path / "d", train, val, vocab_size=100, eos_id=0, tokenizer="t", source=["s"]
    )
    data = load_token_data(out)
    assert np.array_equal(data.train, train) and np.array_equal(data.val, val)
    assert data.train.dtype == np.uint16 and data.vocab_size == 100 and data.eos_id == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_tokens"] == {"train": 1000, "val": 300}
    assert meta["max_id"] == 96 and meta["dtype"] == "uint16" and meta["source"] == ["s"]
    assert not (out / "tokenizer.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    ids = np.array([0, 70000, 100277])
    out = write_token_data(
        tmp_path / "d", ids, ids, vocab_size=100278, eos_id=100257, tokenizer="t", source="x"
    )
    data = load_token_data(out)
    assert data.train.dtype == np.uint32 and np.array_equal(data.val, ids)


def test_missing_dir_names_path_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.*qat-sweep prepare"):
        load_token_data(tmp_path / "nope")


def test_missing_files(tmp_path: Path) -> None:
    out = _write(tmp_path)
    (out / "val.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.bin is missing"):
        load_token_data(out)
    (out / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json is missing"):
        load_token_data(out)


def test_corrupt_meta(tmp_path: Path) -> None:
    out = _write(tmp_path)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_token_data(out)
    (out / "meta.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="lacks key"):
        load_token_data(out)


def test_size_mismatch(tmp_path: Path) -> None:
    out = _write(tmp_path)
    with open(out / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match=r"train\.bin has 2002 bytes"):
        load_token_data(out)


def test_token_id_outside_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"token id 100 outside \[0, 100\)"):
        write_token_data(
            tmp_path / "d", np.array([1, 100]), np.array([1]), vocab_size=100, eos_id=0,
            tokenizer="t", source="s",
        )  # fmt: skip
    assert not any((tmp_path / "d").iterdir())  # temp files cleaned up
    out = _write(tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(meta | {"max_id": 100}))
    with pytest.raises(ValueError, match="max_id=100"):
        load_token_data(out)


def test_rewrite_replaces_previous_data(tmp_path: Path) -> None:
    out = _write(tmp_path, n_train=1000)
    _write(tmp_path, n_train=500)
    assert len(load_token_data(out).train) == 500
    assert not [p for p in out.iterdir() if "tmp" in p.name]


# ---- batching -------------------------------------------------------------------------------


def _schedule(seed: int = 0, n: int = 10_000, seq_len: int = 16, batch: int = 8) -> BatchSchedule:
    return BatchSchedule(np.arange(n, dtype=np.uint16), seq_len, batch, seed)


def test_batch_shapes_and_shift() -> None:
    x, y = _schedule().batch(3)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Windows are aligned, non-overlapping spans of seq_len+1 tokens.
    assert torch.all(x[:, 0] % 17 == 0) and torch.equal(y - x, torch.ones_like(x))


def test_batches_depend_only_on_seed_and_step() -> None:
    first = [_schedule().batch(s) for s in range(5)]
    resumed = _schedule()
    for step in (4, 2, 0, 3, 1):  # any order, fresh instance: exactly the same batches
        assert all(torch.equal(a, b) for a, b in zip(first[step], resumed.batch(step), strict=True))
    assert not torch.equal(_schedule(seed=1).batch(0)[0], first[0][0])
    assert not torch.equal(first[0][0], first[1][0])


def test_ranks_and_micro_batches_partition_global_batch() -> None:
    sched = _schedule(batch=12)
    full_x, full_y = sched.batch(7)
    parts = [
        sched.batch(7, rank=r, world_size=2, micro=m, n_micro=3) for r in range(2) for m in range(3)
    ]
    assert all(p[0].shape == (2, 16) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)


def test_indivisible_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"not divisible by world_size\*n_micro = 2\*2"):
        _schedule(batch=6).batch(0, world_size=2, n_micro=2)


def test_epoch_wrap_visits_every_window_once_per_epoch() -> None:
    sched = _schedule(n=17 * 10, batch=4)  # 10 windows: an epoch is 2.5 steps
    assert sched.n_windows == 10 and sched.epochs_for(5) == 2.0
    starts = torch.cat([sched.batch(s)[0][:, 0] for s in range(5)]).tolist()
    assert sorted(starts[:10]) == sorted(starts[10:]) == list(range(0, 170, 17))
    assert starts[:10] != starts[10:]  # each epoch has its own permutation


def test_split_shorter_than_a_sequence_is_an_error() -> None:
    with pytest.raises(ValueError, match="shorter than one sequence"):
        BatchSchedule(np.arange(16), 16, 1, 0)
    with pytest.raises(ValueError, match="validation split has 10 tokens"):
        val_batches(np.arange(10), 16, 1)


def test_val_batches_fixed_and_evenly_spread() -> None:
    val = np.arange(17 * 100, dtype=np.uint16)
    batches = val_batches(val, 16, batch_seqs=4, max_batches=5)
    again = val_batches(val, 16, batch_seqs=4, max_batches=5)
    assert len(batches) == 5 and all(x.shape == (4, 16) for x, _ in batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    starts = torch.cat([x[:, 0] for x, _ in batches]) // 17
    assert starts[0] == 0 and starts[-1] == 99 and len(set(starts.tolist())) == 20
    assert len(val_batches(val, 16, batch_seqs=4)) == 25
    small = val_batches(val[: 17 * 3], 16, batch_seqs=8)
    assert len(small) == 1 and small[0][0].shape == (3, 16)


# ---- preparation ----------------------------------------------------------------------------

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


def test_prepare_text(tmp_path: Path) -> None:
    out = prepare.prepare_text(
        [_corpus(tmp_path)], tmp_path / "tok", vocab_size=300, val_fraction=0.1, min_val_tokens=10
    )
    data = load_token_data(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert data.vocab_size == tok.get_vocab_size() <= 300
    assert int(max(data.train.max(), data.val.max())) < data.vocab_size
    text = "def f(x):\n    return x ** 2  # ünïcode ✓"
    assert tok.decode(tok.encode(text).ids) == text
    # EOS after every document; every document lands in exactly one split, whole.
    eos = data.eos_id
    assert data.train[-1] == eos and data.val[-1] == eos
    n_docs = int((data.train == eos).sum() + (data.val == eos).sum())
    assert n_docs == len(DOCS) and (data.val == eos).sum() >= 1
    train_text = tok.decode(np.asarray(data.train).tolist())
    val_text = tok.decode(np.asarray(data.val).tolist())
    for i in range(len(DOCS)):
        assert (f"ZQX{i:03d}END" in train_text) != (f"ZQX{i:03d}END" in val_text)
    assert "not a .txt" not in train_text + val_text
    # Validation windows are slices of the held-out documents' stream.
    val_windows = {tuple(data.val[w * 9 : w * 9 + 8].tolist()) for w in range(len(data.val) // 9)}
    assert all(
        tuple(row.tolist()) in val_windows for x, _ in val_batches(data.val, 8, 2) for row in x
    )


def test_prepare_is_deterministic_and_reuses_tokenizer(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    kw = {"vocab_size": 300, "val_fraction": 0.1, "min_val_tokens": 10}
    a = prepare.prepare_text([corpus], tmp_path / "a", **kw)
    b = prepare.prepare_text([corpus], tmp_path / "b", **kw)
    c = prepare.prepare_text(
        [corpus],
        tmp_path / "c",
        tokenizer=a / "tokenizer.json",
        val_fraction=0.1,
        min_val_tokens=10,
    )
    for name in ("train.bin", "val.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes()


def test_prepare_refuses_tiny_or_single_document_corpus(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with pytest.raises(ValueError, match="too little for training"):
        prepare.prepare_text([corpus], tmp_path / "a", vocab_size=300)
    with pytest.raises(ValueError, match="single document"):
        prepare.prepare_text([corpus / "doc00.txt"], tmp_path / "b", vocab_size=300)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path)
    out = tmp_path / "tok"
    args = [f"input={corpus}", f"out={out}", "vocab_size=300", "min_val_tokens=10"]
    assert prepare.main(args) == 0
    assert load_token_data(out).vocab_size <= 300
    assert prepare.main(args) == 1  # refuses to overwrite
    assert "force=true" in capsys.readouterr().err
    assert prepare.main([*args, "force=true"]) == 0
    assert prepare.main([f"input={corpus}", f"out={out}", "vocab=300"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'vocab'" in err and "vocab_size" in err
    assert prepare.main([f"out={out}"]) == 2
    assert "missing required key(s): input" in capsys.readouterr().err
    assert prepare.main(["hf", "dataset=x"]) == 2


def test_hf_without_extras_explains_install(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'qat-sweep\[hf\]'"):
            prepare.prepare_hf(
                "allenai/olmo-mix-1124", "allenai/OLMo-2-1124-7B", tmp_path, max_tokens=10
            )
    else:
        pytest.skip("datasets and transformers are installed")


# ---- demo corpus ----------------------------------------------------------------------------


def test_demo_corpus_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = build_demo_corpus(tmp_path / "a", vocab_size=300, max_bytes=150_000)
    b = build_demo_corpus(tmp_path / "b", vocab_size=300, max_bytes=150_000)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    meta = load_token_data(a).meta
    assert meta["demo"]["max_bytes"] == 150_000 and meta["vocab_size"] == 300
    stamp = (a / "meta.json").stat().st_mtime_ns
    build_demo_corpus(a, vocab_size=300, max_bytes=150_000)
    assert (a / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    build_demo_corpus(a, vocab_size=260, max_bytes=150_000)
    assert load_token_data(a).vocab_size == 260  # other settings: rebuilt


@pytest.mark.slow
def test_default_demo_corpus_size_and_build_time(tmp_path: Path) -> None:
    start = time.monotonic()
    data = load_token_data(build_demo_corpus(tmp_path / "demo"))
    assert time.monotonic() - start < 60
    assert data.vocab_size == 512
    assert 3_000_000 <= len(data.train) + len(data.val) <= 5_000_000
    assert len(data.val) >= 8 * 513
