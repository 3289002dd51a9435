"""Token files in OLMo-core's format, the Feistel batch order, held-out validation, bad input.

The token files are written here exactly as OLMo-core writes them: ``np.memmap(path, mode="w+")``
of uint32 (or uint16) ids, no header, documents separated by EOS, several files.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qat_sweep.config.compose import compose_run, run_dir
from qat_sweep.data.batches import BatchSchedule, HeldOutBlocks, open_data, val_batches
from qat_sweep.data.permutation import FeistelPermutation
from qat_sweep.data.tokenfiles import TokenFiles, data_problem
from qat_sweep.train.setup import validate_run
from qat_sweep.train.trainer import train

VOCAB, EOS = 1000, 999


def write_token_file(path: Path, docs: list[np.ndarray], dtype: str = "uint32") -> np.ndarray:
    """One file as OLMo-core writes it: EOS after every document, a raw memmap."""
    tokens = np.concatenate([np.append(d, EOS) for d in docs]).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=tokens.shape)
    mm[:] = tokens
    mm.flush()
    del mm
    return tokens


def token_files(root: Path, n_files: int = 3, docs: int = 40, seed: int = 0, dtype: str = "uint32"):
    """``n_files`` files of ``docs`` documents each (ids below EOS); returns paths and tokens."""
    rng = np.random.default_rng(seed)
    paths, streams = [], []
    for i in range(n_files):
        path = root / f"part-{i:02d}-00000.npy"
        doc_list = [rng.integers(0, EOS, rng.integers(5, 200)) for _ in range(docs)]
        streams.append(write_token_file(path, doc_list, dtype))
        paths.append(path)
    return paths, np.concatenate(streams)


def npy_cfg(paths: list[Path] | str, **extra) -> dict:
    return {
        "name": "npy",
        "dir": None,
        "root": None,
        "paths": [str(p) for p in paths] if isinstance(paths, list) else [paths],
        "mix": None,
        "tokenizer": None,
        "dtype": "uint32",
        "vocab_size": VOCAB,
        "eos_token_id": EOS,
        "val_paths": [],
        "val_fraction": 0.25,
        "val_block": 256,
        "check": "sample",
        "max_epochs": 1,
    } | extra


# ---- reading -------------------------------------------------------------------------------


def test_token_files_concatenate_without_copying(tmp_path: Path) -> None:
    paths, tokens = token_files(tmp_path)
    files = TokenFiles(paths, "uint32")
    assert len(files) == len(tokens) and tokens[-1] == EOS
    boundary = int(files.offsets[1])
    assert np.array_equal(files.read(boundary - 3, 7), tokens[boundary - 3 : boundary + 4])
    assert files.locate(boundary + 2) == (paths[1], 2)
    assert len(files.read(len(tokens), 0)) == 0
    inside = files.read(5, 10)
    assert isinstance(inside, np.memmap) and not inside.flags.owndata  # a view of the file's map


def test_windows_served_are_exact_slices(tmp_path: Path) -> None:
    paths, tokens = token_files(tmp_path / "train")
    val_paths, val_tokens = token_files(tmp_path / "val", n_files=2, docs=10, seed=1)
    data = open_data(npy_cfg(paths, val_paths=[str(p) for p in val_paths]))
    seq_len, span = 32, 33
    sched = BatchSchedule(data.train, seq_len, 8, seed=5)
    assert sched.n_windows == len(tokens) // span
    for step in (0, 1, 7, sched.n_windows // 8 + 3):  # the last one is in the second epoch
        x, y = sched.batch(step)
        for row_x, row_y, w in zip(x, y, sched.window_ids(step), strict=True):
            expected = tokens[w * span : (w + 1) * span].astype(np.int64)
            assert np.array_equal(row_x.numpy(), expected[:-1])
            assert np.array_equal(row_y.numpy(), expected[1:])
    batches = val_batches(data.val, seq_len, 4, 3)
    starts = np.linspace(0, len(val_tokens) // span - 1, 12).round().astype(int)
    for b, (x, _) in enumerate(batches):
        for r, w in enumerate(starts[b * 4 : (b + 1) * 4]):
            assert np.array_equal(x[r].numpy(), val_tokens[w * span : w * span + seq_len])


def test_held_out_blocks_partition_the_stream(tmp_path: Path) -> None:
    paths, tokens = token_files(tmp_path)
    files = TokenFiles(paths, "uint32")
    train = HeldOutBlocks(files, block=100, stride=4, val=False)
    val = HeldOutBlocks(files, block=100, stride=4, val=True)
    n_blocks = len(tokens) // 100
    assert len(train) + len(val) == len(tokens) and val.n_val == len(range(2, n_blocks, 4))
    val_blocks = val.read(0, len(val)).reshape(-1, 100)
    expected_val = [tokens[b * 100 : (b + 1) * 100] for b in range(2, n_blocks, 4)]
    assert np.array_equal(val_blocks, np.stack(expected_val))  # every 4th block, from block 2
    kept = [tokens[b * 100 : (b + 1) * 100] for b in range(n_blocks) if b % 4 != 2]
    assert np.array_equal(
        train.read(0, len(train)), np.concatenate([*kept, tokens[n_blocks * 100 :]])
    )
    # A read across the seam of two non-adjacent blocks is the two pieces joined.
    assert np.array_equal(train.read(195, 10), np.concatenate([tokens[195:200], tokens[300:305]]))
    # A stream shorter than half a stride holds out its middle block, never the first.
    short = HeldOutBlocks(files, block=len(tokens) // 5, stride=1000, val=True)
    assert short.n_val == 1 and np.array_equal(short.read(0, 10), tokens[2 * short.block :][:10])
    with pytest.raises(ValueError, match=r"1 block\(s\) of data\.val_block=.*too few"):
        HeldOutBlocks(files, block=len(tokens), stride=1000, val=True)


# ---- order ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 1000, 4097, 65537])
def test_feistel_is_a_bijection_with_an_inverse(n: int) -> None:
    perm = FeistelPermutation(n, key=12345)
    image = perm(np.arange(n))
    assert np.array_equal(np.sort(image), np.arange(n))
    assert np.array_equal(perm.inverse(image), np.arange(n))
    assert np.array_equal(FeistelPermutation(n, key=12345)(np.arange(n)), image)  # deterministic
    if n >= 1000:
        assert not np.array_equal(FeistelPermutation(n, key=1)(np.arange(n)), image)
        # Shuffled, not shifted: consecutive positions land far apart, no correlation.
        assert np.mean(np.abs(np.diff(image)) == 1) < 0.01
        assert abs(np.corrcoef(np.arange(n), image)[0, 1]) < 0.1


def test_permutation_memory_is_bounded_at_a_billion_windows() -> None:
    n = 10**9
    tracemalloc.start()
    perm = FeistelPermutation(n, key=7)
    built = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert built < 16_000  # a few keys, not 8 GB of indices
    rng = np.random.default_rng(0)
    positions = rng.choice(n, size=200_000, replace=False)
    image = perm(positions)
    assert image.min() >= 0 and image.max() < n
    assert len(np.unique(image)) == len(positions)  # distinct positions, distinct windows
    assert np.array_equal(perm.inverse(image), positions)
    # A batch from the middle of epoch 0 of a 250B-token corpus: computed, not materialised.
    sched = BatchSchedule(_Virtual(n * 2049), 2048, 512, seed=0)
    assert sched.n_windows == n and len(set(sched.window_ids(10**6).tolist())) == 512


class _Virtual:
    """A stream of a given length whose contents are never read (order-only tests)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def read(self, start: int, n: int) -> np.ndarray:
        raise AssertionError("not read")


def _schedule(seed: int = 0, n: int = 10_000, seq_len: int = 16, batch: int = 8) -> BatchSchedule:
    return BatchSchedule(np.arange(n, dtype=np.uint16), seq_len, batch, seed)


def test_order_visits_every_window_once_per_epoch_and_depends_on_seed_only() -> None:
    sched = _schedule(n=17 * 100, batch=4)  # 100 windows: an epoch is 25 steps
    ids = np.concatenate([sched.window_ids(s) for s in range(50)])
    assert sorted(ids[:100]) == sorted(ids[100:]) == list(range(100))
    assert list(ids[:100]) != list(ids[100:])  # each epoch has its own order
    fresh = _schedule(n=17 * 100, batch=4)
    for step in (31, 0, 12):  # any order, fresh instance: the same batches
        assert torch.equal(fresh.batch(step)[0], sched.batch(step)[0])
    assert not np.array_equal(_schedule(1, n=1700, batch=4).window_ids(0), sched.window_ids(0))
    x, y = sched.batch(3)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.all(x[:, 0] % 17 == 0)


def test_ranks_and_micro_batches_partition_global_batch() -> None:
    sched = _schedule(batch=12)
    full_x, full_y = sched.batch(7)
    parts = [
        sched.batch(7, rank=r, world_size=2, micro=m, n_micro=3) for r in range(2) for m in range(3)
    ]
    assert all(p[0].shape == (2, 16) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    with pytest.raises(ValueError, match=r"not divisible by world_size\*n_micro = 2\*2"):
        _schedule(batch=6).batch(0, world_size=2, n_micro=2)


# ---- a run on token files ------------------------------------------------------------------

TINY = ["model=0.2M", "logger=none", "eval.batches=2", "eval.batch_seqs=4", "train.threads=1"]


def _npy_overrides(paths: list[Path], tmp_path: Path) -> list[str]:
    return [
        *TINY,
        "data=npy",
        f"data.paths=[{','.join(str(p) for p in paths)}]",
        f"data.vocab_size={VOCAB}",
        f"data.eos_token_id={EOS}",
        "data.val_block=1024",
        "data.val_fraction=0.2",
        "optim.batch_seqs=8",
        "tokens=10240",  # 10 steps of 8 x 128
        f"paths.runs={tmp_path / 'runs'}",
    ]


@pytest.mark.slow
def test_tiny_runs_train_from_token_files_and_twins_share_batches(tmp_path: Path) -> None:
    paths, _ = token_files(tmp_path / "tok", n_files=4, docs=120)
    base = _npy_overrides(paths, tmp_path)
    crcs = {}
    for name, extra in (("bf16", []), ("w4a4", ["quant=w4a4", "quant.group_size=32"])):
        record = train(compose_run([*base, *extra]))
        assert record["status"] == "completed", record["error"]
        rows = [
            json.loads(r) for r in (run_dir(compose_run([*base, *extra])) / "metrics.jsonl").open()
        ]
        crcs[name] = [r["batch_crc"] for r in rows if "batch_crc" in r]
        assert np.isfinite(record["val_loss"])
    assert crcs["bf16"] == crcs["w4a4"] and len(crcs["bf16"]) == 10
    # The batches are the schedule's over the held-out view of the files, step by step.
    data = open_data(npy_cfg(paths, val_block=1024, val_fraction=0.2))
    sched = BatchSchedule(data.train, 128, 8, seed=0)
    assert crcs["bf16"] == [zlib.crc32(sched.batch(s)[0].numpy().tobytes()) for s in range(10)]


# ---- bad input -----------------------------------------------------------------------------


def test_bad_token_files_are_named_before_training(tmp_path: Path) -> None:
    paths, _ = token_files(tmp_path, n_files=2)
    with pytest.raises(FileNotFoundError, match=r"token file .*nope\.npy \(data\.paths\)"):
        open_data(npy_cfg([*paths, tmp_path / "nope.npy"]))
    with pytest.raises(FileNotFoundError, match=r"'.*/\*\.bin'.*matches no file"):
        open_data(npy_cfg(str(tmp_path / "*.bin")))
    odd = tmp_path / "odd.npy"
    odd.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"odd\.npy: 10 bytes is not a multiple of 4 \(uint32\)"):
        open_data(npy_cfg([paths[0], odd]))
    # uint16 files read as uint32: ids beyond the vocabulary, named with file and offset.
    small = tmp_path / "u16.npy"
    write_token_file(small, [np.arange(1, 10)] * 50, dtype="uint16")  # 500 ids, an even count
    with pytest.raises(ValueError, match=r"u16\.npy: id 131073 at token 0 \(byte 0\).*data\.dtype"):
        open_data(npy_cfg([small]))
    with pytest.raises(ValueError, match=r"uint32 ids read as uint16; set data\.dtype=uint32"):
        open_data(npy_cfg(paths, dtype="uint16"))
    with pytest.raises(ValueError, match=r"data\.vocab_size is not set"):
        open_data(npy_cfg(paths, vocab_size=None))
    with pytest.raises(ValueError, match="names no token files"):
        open_data(npy_cfg([]))


def test_full_check_finds_an_id_the_sample_misses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.npy"
    tokens = write_token_file(path, [rng.integers(0, EOS, 30_000)])
    mm = np.memmap(path, dtype="uint32", mode="r+")
    mm[10_000] = VOCAB + 5  # between the sampled start, middle and end chunks
    mm.flush()
    del mm
    cfg = npy_cfg([path], val_block=1000)
    assert len(open_data(cfg).train) < len(tokens)  # the sample misses it
    with pytest.raises(ValueError, match=r"big\.npy: id 1005 at token 10000 \(byte 40000\)"):
        open_data(cfg | {"check": "full"})


def test_mix_files(tmp_path: Path) -> None:
    _, tokens = token_files(tmp_path / "preprocessed" / "src" / "dolma2", n_files=2)
    mix = tmp_path / "mix.txt"
    mix.write_text(
        "# comment\n\nsrc,preprocessed/src/{TOKENIZER}/part-00-00000.npy\n"
        "preprocessed/src/dolma2/part-01-00000.npy\n"
    )
    cfg = npy_cfg([], root=str(tmp_path), mix=str(mix), tokenizer="dolma2")
    data = open_data(cfg)
    assert len(data.train) + len(data.val) == len(tokens)
    assert data.source == f"data.mix={mix}"
    mix.write_text("# nothing here\n")
    with pytest.raises(ValueError, match=r"mix file .*mix\.txt \(data\.mix\) lists no token files"):
        open_data(cfg)
    assert "lists no token files" in (data_problem(cfg) or "")
    with pytest.raises(FileNotFoundError, match=r"mix file .*absent\.txt"):
        open_data(cfg | {"mix": str(tmp_path / "absent.txt")})


def test_token_budget_beyond_the_data_says_how_many_passes(tmp_path: Path) -> None:
    paths, _ = token_files(tmp_path / "tok", n_files=2)
    base = _npy_overrides(paths, tmp_path)
    cfg = compose_run([*base, "tokens=102400"])
    with pytest.raises(ValueError, match=r"is \d+\.\d\d passes over the .* training tokens of "
                       r"data\.paths=.*part-00-00000\.npy.*data\.max_epochs=1 allows at most 1"):  # fmt: skip
        validate_run(cfg)
    record = train(cfg)
    assert record["status"] == "failed" and "passes over" in record["error"]
    assert not (run_dir(cfg) / "metrics.jsonl").exists()  # no training step
    validate_run(compose_run([*base, "tokens=102400", "data.max_epochs=100"]))  # allowed


def test_prepared_directory_errors(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"old train\.bin/meta\.json format"):
        open_data({"name": "custom", "dir": str(tmp_path / "old")})
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*qat-sweep prepare"):
        open_data({"name": "custom", "dir": str(tmp_path / "nowhere")})


def test_run_keys_cover_token_files_and_survive_moving_the_data_root(tmp_path: Path) -> None:
    def key(*extra: str) -> str:
        return compose_run(
            ["data=npy", "data.vocab_size=10", "data.eos_token_id=0", *extra]
        ).run_key

    assert key("data.paths=[/a/x.npy]") != key("data.paths=[/a/y.npy]")
    assert key("data.paths=[/a/x.npy]") != key("data.paths=[/a/x.npy]", "data.dtype=uint16")
    inside = ["data.paths=[${paths.data}/tok/x.npy]"]
    assert key(*inside, "paths.data=/one") == key(*inside, "paths.data=/two")
    olmo = compose_run(["data=olmo2"])
    assert olmo.data.mix.endswith("olmo2-mix.txt") and olmo.data.vocab_size == 100278
