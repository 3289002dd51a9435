"""Local text into a prepared token directory: a byte-level BPE trained on the corpus itself
(``tokenizers``, offline) or a given tokenizer file, EOS after every document, written in parts
by ``shards`` (parallel, split across SLURM array tasks, resumable)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qat_sweep.data.prepare.shards import (
    DEFAULT_MIN_VAL_TOKENS,
    DEFAULT_VAL_FRACTION,
    _chunks,
    check_split,
    ensure_plan,
    log,
    run_parts,
)
from qat_sweep.data.tokenfiles import token_dtype

EOS_TOKEN = "<|endoftext|>"
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_PART_MB = 64.0  # of text per part: ~16M tokens, a few seconds of one core
ENCODE_CHUNK_DOCS = 256
GZ_SUFFIXES = (".jsonl.gz", ".json.gz")


def find_text_files(inputs: Iterable[str | Path], pattern: str = "*.txt") -> list[Path]:
    """Files named directly plus files matching ``pattern`` under directories, sorted."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob(pattern) if p.is_file())
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    files = sorted(found)
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} under {[str(i) for i in inputs]}")
    return files


def _text(line: bytes | str, where: str) -> str:
    record = json.loads(line)
    if "text" not in record:
        raise ValueError(f"{where} has no 'text' field")
    return record["text"]


def piece_documents(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[str]:
    """Documents of bytes ``[start, end)`` of a file: a ``.jsonl`` (or ``.jsonl.gz``) line each
    (``text`` field; a line belongs to the piece holding its first byte), any other file is one
    document."""
    path = Path(path)
    if path.name.endswith(GZ_SUFFIXES):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _text(line, f"{path}:{n}")
    elif path.suffix == ".jsonl":
        with path.open("rb") as f:
            if start:
                f.seek(start - 1)
                f.readline()  # the rest of a line that began in the previous piece
            while end is None or f.tell() < end:
                at = f.tell()
                line = f.readline()
                if not line:
                    break
                if line.strip():
                    yield _text(line, f"{path} (byte {at})")
    else:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text:
            yield text


def iter_documents(files: Iterable[Path]) -> Iterator[str]:
    """Every document of ``files`` in file order (what the tokenizer is trained on)."""
    for path in files:
        yield from piece_documents(path)


def plan_parts(files: list[Path], part_bytes: int, seed: int) -> list[list[list[Any]]]:
    """Pieces ``[path, start, end]`` grouped into parts of about ``part_bytes`` of text.

    Large ``.jsonl`` files are cut into byte ranges (line-aligned when read), everything else is
    one piece; pieces are shuffled with ``seed`` before grouping, so each part mixes the corpus.
    """
    pieces: list[list[Any]] = []
    for path in files:
        size = path.stat().st_size
        if path.suffix == ".jsonl" and size > part_bytes:
            pieces += [
                [str(path), a, min(a + part_bytes, size)] for a in range(0, size, part_bytes)
            ]
        else:
            pieces.append([str(path), 0, size])
    parts: list[list[list[Any]]] = [[]]
    filled = 0
    for i in np.random.default_rng(seed).permutation(len(pieces)).tolist():
        if filled >= part_bytes:
            parts.append([])
            filled = 0
        parts[-1].append(pieces[i])
        filled += pieces[i][2] - pieces[i][1]
    return parts


def train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) with EOS as id 0: any text encodes, no unknown tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + 1} for byte-level BPE")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def find_eos_id(tokenizer: Tokenizer, eos_token: str | None = None) -> int:
    """The id of ``eos_token``, or of the first conventional EOS spelling the tokenizer has."""
    candidates = (eos_token,) if eos_token else EOS_CANDIDATES
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer has none of the EOS tokens {candidates}; pass eos_token=...")


_TOKENIZERS: dict[str, Tokenizer] = {}


@dataclass(frozen=True)
class TextJob:
    """Encodes the pieces of each part with the prepared directory's tokenizer."""

    parts: list[list[list[Any]]]
    tokenizer_json: str  # the text, not a path: a rewritten file never meets a cached tokenizer
    eos_id: int
    dtype: str

    def documents(self, part: int) -> Iterator[np.ndarray]:
        key = hashlib.sha256(self.tokenizer_json.encode()).hexdigest()
        if key not in _TOKENIZERS:  # once per worker process
            tok = Tokenizer.from_str(self.tokenizer_json)
            tok.encode_special_tokens = True  # literal "<|endoftext|>" in a document is text
            _TOKENIZERS[key] = tok
        tok = _TOKENIZERS[key]
        texts = (t for path, a, b in self.parts[part] for t in piece_documents(path, a, b))
        for chunk in _chunks(texts, ENCODE_CHUNK_DOCS):
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                yield np.array([*enc.ids, self.eos_id], dtype=self.dtype)


def _corpus_tokenizer(
    files: list[Path],
    tok_text: str | None,
    tokenizer: str | Path | None,
    vocab_size: int | None,
    min_frequency: int,
) -> tuple[Tokenizer, str]:
    """The given tokenizer (its vocab must match ``vocab_size``) or a BPE trained on ``files``."""
    if tok_text is not None:
        tok = Tokenizer.from_str(tok_text)
        if vocab_size is not None and vocab_size != tok.get_vocab_size():
            raise ValueError(
                f"vocab_size={vocab_size} but tokenizer {tokenizer} has "
                f"{tok.get_vocab_size()} tokens; drop vocab_size or the tokenizer"
            )
        return tok, f"tokenizers file {tokenizer}"
    tok = train_bpe(iter_documents(files), vocab_size or DEFAULT_VOCAB_SIZE, min_frequency)
    log(f"trained byte-level BPE, {tok.get_vocab_size()} tokens")
    return tok, f"byte-level BPE trained on the corpus (vocab {tok.get_vocab_size()})"


def prepare_files(
    files: list[Path],
    out_dir: str | Path,
    *,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    eos_token: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
    min_frequency: int = 2,
    seed: int = 0,
    part_mb: float = DEFAULT_PART_MB,
    workers: int = 1,
    shards: int = 1,
    shard: int = 0,
    force: bool = False,
    source: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Tokenise ``files`` (trained or given tokenizer) into a prepared directory, in parts.

    Resumes an interrupted preparation of the same inputs and settings; with ``shards > 1``
    this call writes only its share and the last task to finish writes the manifest.
    """
    out = Path(out_dir)
    check_split(val_fraction)
    part_bytes = max(1, int(part_mb * 1e6))
    tok_text = Path(tokenizer).read_text() if tokenizer is not None else None
    fingerprint = {
        "kind": "text",
        "inputs": [[str(p), p.stat().st_size] for p in files],
        "vocab_size": vocab_size,
        "tokenizer": hashlib.sha256(tok_text.encode()).hexdigest() if tok_text else None,
        "eos_token": eos_token,
        "min_frequency": min_frequency,
        "val_fraction": val_fraction,
        "min_val_tokens": min_val_tokens,
        "seed": seed,
        "part_bytes": part_bytes,
        "extra": extra or {},
    }

    def make_plan() -> dict[str, Any]:
        log(f"{len(files):,} files, {sum(p.stat().st_size for p in files) / 1e6:,.1f} MB")
        tok, description = _corpus_tokenizer(files, tok_text, tokenizer, vocab_size, min_frequency)
        (out / "tokenizer.json").write_text(tok.to_str())
        vocab = tok.get_vocab_size()
        parts = plan_parts(files, part_bytes, seed)
        return {
            "n_parts": len(parts),
            "parts": parts,
            "dtype": token_dtype(vocab).name,
            "vocab_size": vocab,
            "eos_token_id": find_eos_id(tok, eos_token),
            "tokenizer": description,
            "tokenizer_file": "tokenizer.json",
            "seed": seed,
            "val_fraction": val_fraction,
            "min_val_tokens": min_val_tokens,
            "source": source if source is not None else [str(p) for p in files],
            "settings": {
                k: fingerprint[k] for k in ("val_fraction", "min_val_tokens", "seed", "part_bytes")
            },
            "extra": extra or {},
        }

    plan = ensure_plan(out, fingerprint, make_plan, force)
    tok_json = (out / "tokenizer.json").read_text()
    job = TextJob(plan["parts"], tok_json, plan["eos_token_id"], plan["dtype"])
    run_parts(out, plan, job, workers=workers, shards=shards, shard=shard)
    return out


def prepare_text(
    inputs: list[Path], out_dir: str | Path, *, pattern: str = "*.txt", **options: Any
) -> Path:
    """Prepare local text files and directories (searched recursively for ``pattern``);
    ``options`` are prepare_files' keywords."""
    return prepare_files(
        find_text_files(inputs, pattern), out_dir, source=[str(Path(p)) for p in inputs], **options
    )
