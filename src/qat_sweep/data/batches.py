"""The tokens a run trains on and the deterministic batch order over them.

Training reads token files in OLMo-core's format (``tokenfiles``): a prepared directory
(``data.dir``, what ``qat-sweep prepare`` and the demo corpus write) or files named directly
(``data=npy``: ``data.paths``/``data.mix``). Either way it is one code path: a train and a val
token stream, windows of ``seq_len+1`` tokens over the concatenation.

The trainer's interface is two calls: ``BatchSchedule.batch(step, rank, world_size, micro,
n_micro)`` (the inputs and targets of one rank's micro-batch of global step ``step``) and
``val_batches(...)`` (the fixed validation batches). The order is a pure function of ``(seed,
step)`` and the data: a resumed run, a BF16 run and its quantized twin see exactly the same
sequences in the same order, which the paired delta in the scaling law relies on. It is a keyed
Feistel permutation of window indices per epoch (``permutation``): O(1) memory at any scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from qat_sweep.data.permutation import FeistelPermutation, derive_key
from qat_sweep.data.tokenfiles import TokenFiles, check_token_ids, held_out_blocks, resolve_data


class TokenStream(Protocol):
    """A flat sequence of token ids: a ``TokenFiles`` concatenation, a held-out view, an array."""

    def __len__(self) -> int: ...

    def read(self, start: int, n: int) -> np.ndarray: ...


class ArrayTokens:
    """An in-memory array as a token stream (tests, small corpora)."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.tokens[start : start + n]


def as_stream(tokens: TokenStream | np.ndarray) -> TokenStream:
    return ArrayTokens(tokens) if isinstance(tokens, np.ndarray) else tokens


class HeldOutBlocks:
    """Train or validation view of one stream cut into blocks: every ``stride``-th block is val.

    Validation blocks (block ``b`` with ``b % stride == offset``, ``offset`` half a stride or the
    middle block of a short stream) are spread evenly over the whole concatenation, so they
    sample every file of a mix and never start at its first documents, and they are contiguous
    spans of ``block`` tokens, so most held-out documents are held out whole. The mapping is
    arithmetic: O(1) memory at any size. Tokens after the last whole block train.
    """

    def __init__(self, base: TokenStream, block: int, stride: int, val: bool) -> None:
        if block <= 0 or stride < 2:
            raise ValueError(
                f"held-out blocks need block > 0 and stride >= 2, got {block}, {stride}"
            )
        self.base, self.block, self.stride, self.val = base, block, stride, val
        self.n_blocks, self.offset, self.n_val = held_out_blocks(len(base), block, stride)
        self.tail = len(base) - self.n_blocks * block

    def __len__(self) -> int:
        if self.val:
            return self.n_val * self.block
        return (self.n_blocks - self.n_val) * self.block + self.tail

    def _physical(self, b: int) -> int:
        """Index in ``base`` of this view's block ``b``."""
        if self.val:
            return b * self.stride + self.offset
        group, r = divmod(b, self.stride - 1)
        return group * self.stride + r + (r >= self.offset)

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > len(self):
            raise IndexError(f"tokens [{start}, {start + n}) outside [0, {len(self)})")
        if n == 0:
            return self.base.read(0, 0)
        parts = []
        n_train_blocks = self.n_blocks - self.n_val
        while n > 0:
            b, lo = divmod(start, self.block)
            if not self.val and b >= n_train_blocks:  # the tail after the last whole block
                p0, avail = self.n_blocks * self.block + (start - n_train_blocks * self.block), n
            else:
                p0, avail = self._physical(b) * self.block + lo, self.block - lo
            take = min(n, avail)
            parts.append(self.base.read(p0, take))
            start, n = start + take, n - take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True)
class TokenData:
    """The train and validation streams of a data config, with their vocabulary."""

    train: TokenStream
    val: TokenStream
    vocab_size: int
    eos_id: int
    source: str  # names the directory, mix or files in messages
    meta: dict[str, Any] = field(default_factory=dict)  # a prepared directory's manifest


def open_data(cfg: Mapping[str, Any]) -> TokenData:
    """Open the data a config names, checking it before any training step: file sizes, a sample
    of token ids (``check: full`` reads them all) and that validation has data. Reading only: the
    trainer builds a missing demo corpus first (``train.setup``)."""
    spec = resolve_data(cfg)
    check = str(cfg.get("check") or "sample")
    if check not in ("sample", "full"):
        raise ValueError(f"data.check={check!r}; allowed: sample, full")
    train_files = TokenFiles(spec.train, spec.dtype)
    check_token_ids(train_files, spec.vocab_size, spec.eos_id, full=check == "full")
    if spec.val:
        val_files = TokenFiles(spec.val, spec.dtype)
        check_token_ids(val_files, spec.vocab_size, spec.eos_id, full=check == "full")
        train, val = train_files, val_files
    else:
        stride = round(1 / spec.val_fraction)
        train = HeldOutBlocks(train_files, spec.val_block, stride, val=False)
        val = HeldOutBlocks(train_files, spec.val_block, stride, val=True)
    return TokenData(train, val, spec.vocab_size, spec.eos_id, spec.source, spec.meta)


def check_token_budget(
    data: TokenData, seq_len: int, sequences: int, max_epochs: float | None
) -> float:
    """Passes over the training windows that ``sequences`` make; an error above ``max_epochs``."""
    n_windows = _n_windows(len(data.train), seq_len, "training")
    epochs = sequences / n_windows
    if max_epochs is not None and epochs > float(max_epochs):
        raise ValueError(
            f"the token budget ({sequences:,} sequences of {seq_len}) is {epochs:.2f} passes over "
            f"the {n_windows * seq_len:,} training tokens of {data.source}; data.max_epochs="
            f"{max_epochs} allows at most {float(max_epochs):g}. Lower tokens, add data, or raise "
            f"data.max_epochs to repeat data (each pass visits the windows in a new order)"
        )
    return epochs


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
    tokens: TokenStream, seq_len: int, idx: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows ``idx`` of ``seq_len+1`` tokens into inputs and next-token targets."""
    span = seq_len + 1
    rows = np.empty((len(idx), span), dtype=np.int64)
    for row, w in zip(rows, idx.tolist(), strict=True):
        row[:] = tokens.read(w * span, span)
    seqs = torch.from_numpy(rows)
    return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()


class BatchSchedule:
    """Stateless data order: global sequence ``i = step*B + j`` maps to one fixed window.

    The training stream is cut into non-overlapping windows of ``seq_len+1`` tokens; epoch ``e``
    visits them in the Feistel permutation keyed by ``(seed, e)``. Nothing depends on what was
    read before, so resuming at step ``s`` replays exactly the batches an uninterrupted run sees.
    """

    def __init__(
        self, tokens: TokenStream | np.ndarray, seq_len: int, global_batch_seqs: int, seed: int
    ) -> None:
        if global_batch_seqs <= 0:
            raise ValueError(f"global_batch_seqs must be positive, got {global_batch_seqs}")
        self.tokens = as_stream(tokens)
        self.seq_len = seq_len
        self.global_batch_seqs = global_batch_seqs
        self.seed = seed
        self.n_windows = _n_windows(len(self.tokens), seq_len, "training")

    def epochs_for(self, steps: int) -> float:
        """How many passes over the training windows ``steps`` optimizer steps make."""
        return steps * self.global_batch_seqs / self.n_windows

    def permutation(self, epoch: int) -> FeistelPermutation:
        """The window order of ``epoch``, keyed by ``(seed, epoch)`` only."""
        return FeistelPermutation(self.n_windows, derive_key(self.seed, epoch))

    def window_ids(
        self, step: int, rank: int = 0, world_size: int = 1, micro: int = 0, n_micro: int = 1
    ) -> np.ndarray:
        """Indices of the windows in one rank's micro-batch of ``step`` (see ``batch``)."""
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
        epochs, positions = np.divmod(np.arange(start, start + per_micro), self.n_windows)
        windows = np.empty(per_micro, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            here = epochs == epoch
            windows[here] = self.permutation(epoch)(positions[here])
        return windows

    def batch(
        self, step: int, rank: int = 0, world_size: int = 1, micro: int = 0, n_micro: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (int64, ``[B/(W*n_micro), seq_len]``) of one rank's micro-batch."""
        ids = self.window_ids(step, rank, world_size, micro, n_micro)
        return _windows(self.tokens, self.seq_len, ids)


def val_batches(
    val_tokens: TokenStream | np.ndarray,
    seq_len: int,
    batch_seqs: int,
    max_batches: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches of equal size, windows spread evenly over the whole split.

    Evenly spaced windows make a capped evaluation representative of the split rather than of
    its first documents, and equal batch sizes make the plain mean of batch losses exact.
    """
    if batch_seqs <= 0 or (max_batches is not None and max_batches <= 0):
        raise ValueError(
            f"batch_seqs and max_batches must be positive, got {batch_seqs}, {max_batches}"
        )
    stream = as_stream(val_tokens)
    n_windows = _n_windows(len(stream), seq_len, "validation")
    if n_windows < batch_seqs:
        batch_seqs, n_batches = n_windows, 1
    else:
        n_batches = n_windows // batch_seqs
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
    chosen = np.linspace(0, n_windows - 1, n_batches * batch_seqs).round().astype(np.int64)
    return [
        _windows(stream, seq_len, chosen[b * batch_seqs : (b + 1) * batch_seqs])
        for b in range(n_batches)
    ]
