"""Token data directories and the deterministic batch order every run trains on.

A data directory holds ``train.bin`` and ``val.bin`` (flat token ids, read with ``np.memmap``),
``meta.json`` and, when the project owns the tokenizer, ``tokenizer.json``. ``meta.json`` is written
last and removed first on rewrite, so a directory with a readable, consistent ``meta.json`` is a
complete one.

The batch order is a pure function of ``(seed, step)``: a resumed run and a BF16 run and its
quantized twin see exactly the same sequences in the same order, which the paired delta in the
scaling law relies on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_KEYS = ("format_version", "tokenizer", "vocab_size", "dtype", "n_tokens", "max_id", "eos_id")
HOW_TO_CREATE = (
    "create it with `qat-sweep prepare demo out=DIR` (offline demo corpus), "
    "`qat-sweep prepare input=PATH out=DIR vocab_size=4096` (local text) or "
    "`qat-sweep prepare hf dataset=... tokenizer=... out=DIR max_tokens=...`"
)


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 halves disk and page cache."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


@dataclass(frozen=True)
class TokenData:
    """A loaded data directory: memory-mapped splits plus their metadata."""

    train: np.memmap
    val: np.memmap
    meta: dict[str, Any]
    vocab_size: int
    path: Path

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])


class TokenDataWriter:
    """Appends token chunks to a data directory and commits it atomically.

    Chunks go to temporary files; ``commit`` renames them into place and writes ``meta.json`` last,
    so readers never see a half-written directory as valid. Streaming corpora (billions of tokens)
    are written chunk by chunk without holding them in memory.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        vocab_size: int,
        eos_id: int,
        tokenizer: str,
        source: list[str] | str,
        tokenizer_json: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} outside vocabulary of size {vocab_size}")
        self.out_dir = Path(out_dir)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.eos_id = eos_id
        self.tokenizer = tokenizer
        self.source = source
        self.tokenizer_json = tokenizer_json
        self.extra = extra or {}
        self.n_tokens = dict.fromkeys(SPLITS, 0)
        self.max_id = -1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = {s: self.out_dir / f".{s}.bin.tmp-{os.getpid()}" for s in SPLITS}
        # Held open across append calls; closed by commit or abort.
        self._files = {s: open(self._tmp[s], "wb") for s in SPLITS}  # noqa: SIM115

    def append(self, split: str, ids: Iterable[int] | np.ndarray) -> None:
        """Append token ids to ``split``; rejects ids the vocabulary cannot hold."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be a flat integer array, got {arr.dtype} {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(
                f"token id {hi if hi >= self.vocab_size else lo} outside [0, {self.vocab_size}) "
                f"while writing {self.out_dir}"
            )
        self._files[split].write(arr.astype(self.dtype, copy=False).tobytes())
        self.n_tokens[split] += int(arr.size)
        self.max_id = max(self.max_id, hi)

    def commit(self) -> Path:
        """Move the splits into place and write ``meta.json``; returns the directory."""
        for f in self._files.values():
            f.close()
        empty = [s for s in SPLITS if self.n_tokens[s] == 0]
        if empty:
            self.abort()
            raise ValueError(f"refusing to write {self.out_dir}: split(s) {empty} are empty")
        meta_path = self.out_dir / "meta.json"
        meta_path.unlink(missing_ok=True)
        for s in SPLITS:
            os.replace(self._tmp[s], self.out_dir / f"{s}.bin")
        tok_path = self.out_dir / "tokenizer.json"
        if self.tokenizer_json is not None:
            _atomic_write_text(tok_path, self.tokenizer_json)
        else:
            tok_path.unlink(missing_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "n_tokens": dict(self.n_tokens),
            "max_id": self.max_id,
            "eos_id": self.eos_id,
            "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }
        _atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        return self.out_dir

    def abort(self) -> None:
        """Drop the temporary files, leaving any previous directory contents untouched."""
        for s in SPLITS:
            self._files[s].close()
            self._tmp[s].unlink(missing_ok=True)

    def __enter__(self) -> TokenDataWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def write_token_data(
    out_dir: str | Path,
    train: np.ndarray,
    val: np.ndarray,
    *,
    vocab_size: int,
    eos_id: int,
    tokenizer: str,
    source: list[str] | str,
    tokenizer_json: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write in-memory train/val token arrays as a data directory (atomically)."""
    with TokenDataWriter(
        out_dir,
        vocab_size=vocab_size,
        eos_id=eos_id,
        tokenizer=tokenizer,
        source=source,
        tokenizer_json=tokenizer_json,
        extra=extra,
    ) as writer:
        writer.append("train", train)
        writer.append("val", val)
        return writer.commit()


def load_token_data(data_dir: str | Path) -> TokenData:
    """Open a data directory, checking ``meta.json`` against the files before any training."""
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"token data directory {path} does not exist; {HOW_TO_CREATE}")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing (the directory is not a prepared corpus or its preparation "
            f"did not finish); {HOW_TO_CREATE}"
        )
    meta = _read_meta(meta_path)
    vocab_size = meta["vocab_size"]
    dtype = token_dtype(vocab_size)
    if meta["dtype"] != dtype.name:
        raise ValueError(
            f"{meta_path}: dtype {meta['dtype']!r} but vocab_size {vocab_size} needs {dtype.name}"
        )
    if not -1 < meta["max_id"] < vocab_size or not 0 <= meta["eos_id"] < vocab_size:
        raise ValueError(
            f"{meta_path}: token ids up to max_id={meta['max_id']} (eos_id={meta['eos_id']}) "
            f"do not fit vocab_size={vocab_size}; the tokenizer and the model vocabulary disagree. "
            f"Re-prepare the corpus: {HOW_TO_CREATE}"
        )
    splits = {}
    for split in SPLITS:
        bin_path = path / f"{split}.bin"
        if not bin_path.is_file():
            raise FileNotFoundError(f"{bin_path} is missing; {HOW_TO_CREATE}")
        expected = meta["n_tokens"][split] * dtype.itemsize
        actual = bin_path.stat().st_size
        if actual != expected:
            raise ValueError(
                f"{bin_path} has {actual} bytes but meta.json says {meta['n_tokens'][split]} "
                f"{dtype.name} tokens ({expected} bytes); the directory is corrupt, re-prepare it: "
                f"{HOW_TO_CREATE}"
            )
        splits[split] = np.memmap(bin_path, dtype=dtype, mode="r")
    return TokenData(splits["train"], splits["val"], meta, vocab_size, path)


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); re-prepare: {HOW_TO_CREATE}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks key(s) {missing}; re-prepare: {HOW_TO_CREATE}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta['format_version']}, this qat-sweep reads "
            f"{FORMAT_VERSION}; re-prepare: {HOW_TO_CREATE}"
        )
    n_tokens = meta["n_tokens"]
    if not isinstance(n_tokens, dict) or any(
        not isinstance(n_tokens.get(s), int) or n_tokens[s] < 0 for s in SPLITS
    ):
        raise ValueError(
            f"{meta_path}: n_tokens must map {SPLITS} to token counts, got {n_tokens!r}"
        )
    for key in ("vocab_size", "max_id", "eos_id"):
        if not isinstance(meta[key], int):
            raise ValueError(f"{meta_path}: {key} must be an integer, got {meta[key]!r}")
    if meta["vocab_size"] <= 0:
        raise ValueError(f"{meta_path}: vocab_size must be positive, got {meta['vocab_size']}")
    return meta


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _n_windows(n_tokens: int, seq_len: int, what: str) -> int:
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    n = n_tokens // (seq_len + 1)
    if n == 0:
        raise ValueError(
            f"the {what} split has {n_tokens} tokens, shorter than one sequence of "
            f"seq_len+1={seq_len + 1} tokens; use a shorter seq_len or a larger corpus"
        )
    return n


def _windows(
    tokens: np.ndarray, seq_len: int, idx: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows ``idx`` of ``seq_len+1`` tokens into inputs and next-token targets."""
    span = seq_len + 1
    rows = np.stack([np.asarray(tokens[w * span : (w + 1) * span]) for w in idx.tolist()])
    seqs = torch.from_numpy(rows.astype(np.int64))
    return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()


class BatchSchedule:
    """Stateless data order: global sequence ``i = step*B + j`` maps to one fixed window.

    The token stream is cut into non-overlapping windows of ``seq_len+1`` tokens; epoch ``e``
    visits them in a permutation drawn from ``(seed, e)``. Nothing depends on what was read before,
    so resuming at step ``s`` replays exactly the batches an uninterrupted run would see.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch_seqs: int, seed: int) -> None:
        if global_batch_seqs <= 0:
            raise ValueError(f"global_batch_seqs must be positive, got {global_batch_seqs}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch_seqs = global_batch_seqs
        self.seed = seed
        self.n_windows = _n_windows(len(tokens), seq_len, "training")
        self._perms: dict[int, np.ndarray] = {}

    def epochs_for(self, steps: int) -> float:
        """How many passes over the training windows ``steps`` optimizer steps make."""
        return steps * self.global_batch_seqs / self.n_windows

    def permutation(self, epoch: int) -> np.ndarray:
        """The window order of ``epoch``, seeded from ``(seed, epoch)`` only."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.n_windows)
        return self._perms[epoch]

    def batch(
        self, step: int, rank: int = 0, world_size: int = 1, micro: int = 0, n_micro: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (int64, ``[B/(W*n_micro), seq_len]``) of one rank's micro-batch."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if world_size <= 0 or n_micro <= 0:
            raise ValueError(
                f"world_size and n_micro must be positive, got {world_size}, {n_micro}"
            )
        if self.global_batch_seqs % (world_size * n_micro):
            raise ValueError(
                f"global batch of {self.global_batch_seqs} sequences is not divisible by "
                f"world_size*n_micro = {world_size}*{n_micro}; choose a batch size that is"
            )
        if not 0 <= rank < world_size or not 0 <= micro < n_micro:
            raise ValueError(f"rank {rank}/{world_size} or micro {micro}/{n_micro} out of range")
        per_rank = self.global_batch_seqs // world_size
        per_micro = per_rank // n_micro
        start = step * self.global_batch_seqs + rank * per_rank + micro * per_micro
        seq_ids = np.arange(start, start + per_micro)
        epochs, positions = np.divmod(seq_ids, self.n_windows)
        windows = np.array(
            [self.permutation(int(e))[p] for e, p in zip(epochs, positions, strict=True)]
        )
        return _windows(self.tokens, self.seq_len, windows)


def val_batches(
    val_tokens: np.ndarray, seq_len: int, batch_seqs: int, max_batches: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches of equal size, windows spread evenly over the whole split.

    Evenly spaced windows make a capped evaluation representative of the split rather than of
    its first documents, and equal batch sizes make the plain mean of batch losses exact.
    """
    if batch_seqs <= 0 or (max_batches is not None and max_batches <= 0):
        raise ValueError(
            f"batch_seqs and max_batches must be positive, got {batch_seqs}, {max_batches}"
        )
    n_windows = _n_windows(len(val_tokens), seq_len, "validation")
    if n_windows < batch_seqs:
        batch_seqs, n_batches = n_windows, 1
    else:
        n_batches = n_windows // batch_seqs
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
    chosen = np.linspace(0, n_windows - 1, n_batches * batch_seqs).round().astype(np.int64)
    return [
        _windows(val_tokens, seq_len, chosen[b * batch_seqs : (b + 1) * batch_seqs])
        for b in range(n_batches)
    ]
