"""Turn text into a prepared token directory (``qat-sweep prepare``).

Local text gets a byte-level BPE trained on the corpus itself (``tokenizers``, offline); full-scale
corpora such as OLMo2-Mix stream from the Hugging Face hub with their released tokenizer. Both
append EOS after every document, write OLMo-core token files in parts (``shards``: parallel with
``workers=K``, split across SLURM array tasks with ``shards=K shard=I``, resumable), shuffle
documents and hold out whole documents for validation, so validation loss measures
generalisation to unseen documents rather than to unseen windows of seen ones.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qat_sweep.common import InputError, parse_bool, parse_keys, parse_tokens
from qat_sweep.shards import _chunks, ensure_plan, log, run_parts
from qat_sweep.tokenfiles import MANIFEST, token_dtype

EOS_TOKEN = "<|endoftext|>"
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_VAL_FRACTION = 0.005
# Eight sequences of the paper's 2048 context: enough for a stable held-out loss.
DEFAULT_MIN_VAL_TOKENS = 8 * 2049
DEFAULT_PART_MB = 64.0  # of text per part: ~16M tokens, a few seconds of one core
ENCODE_CHUNK_DOCS = 256
HF_PART_TOKENS = 1_000_000_000
HF_SHUFFLE_DOCS = 50_000
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
    _check_split(val_fraction)
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
        if tok_text is not None:
            tok = Tokenizer.from_str(tok_text)
            if vocab_size is not None and vocab_size != tok.get_vocab_size():
                raise ValueError(
                    f"vocab_size={vocab_size} but tokenizer {tokenizer} has "
                    f"{tok.get_vocab_size()} tokens; drop vocab_size or the tokenizer"
                )
            description = f"tokenizers file {tokenizer}"
        else:
            tok = train_bpe(iter_documents(files), vocab_size or DEFAULT_VOCAB_SIZE, min_frequency)
            description = f"byte-level BPE trained on the corpus (vocab {tok.get_vocab_size()})"
            log(f"trained byte-level BPE, {tok.get_vocab_size()} tokens")
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
    inputs: list[Path],
    out_dir: str | Path,
    vocab_size: int | None = None,
    tokenizer: Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_frequency: int = 2,
    *,
    pattern: str = "*.txt",
    min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
    eos_token: str | None = None,
    seed: int = 0,
    part_mb: float = DEFAULT_PART_MB,
    workers: int = 1,
    shards: int = 1,
    shard: int = 0,
    force: bool = False,
) -> Path:
    """Prepare local text files and directories (searched recursively for ``pattern``)."""
    return prepare_files(
        find_text_files(inputs, pattern),
        out_dir,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        eos_token=eos_token,
        val_fraction=val_fraction,
        min_val_tokens=min_val_tokens,
        min_frequency=min_frequency,
        seed=seed,
        part_mb=part_mb,
        workers=workers,
        shards=shards,
        shard=shard,
        force=force,
        source=[str(Path(p)) for p in inputs],
    )


@dataclass(frozen=True)
class HFJob:
    """Streams shard ``part`` of a Hugging Face dataset through its released tokenizer."""

    dataset: str
    name: str | None
    split: str
    text_field: str
    tokenizer: str
    streaming: bool
    n_parts: int
    part_tokens: int
    batch_docs: int
    eos_id: int
    dtype: str

    def documents(self, part: int) -> Iterator[np.ndarray]:
        datasets, transformers = _import_hf()
        tok = transformers.AutoTokenizer.from_pretrained(self.tokenizer)
        rows = datasets.load_dataset(
            self.dataset, self.name, split=self.split, streaming=self.streaming
        ).shard(num_shards=self.n_parts, index=part)
        n_tokens = 0
        for texts in _chunks(_field(rows, self.text_field), self.batch_docs):
            for ids in tok(texts, add_special_tokens=False)["input_ids"]:
                yield np.array([*ids, self.eos_id], dtype=self.dtype)
                n_tokens += len(ids) + 1
            if n_tokens >= self.part_tokens:
                return


def prepare_hf(
    dataset: str,
    tokenizer: str,
    out_dir: str | Path,
    split: str = "train",
    text_field: str = "text",
    max_tokens: int = 1_000_000_000,
    streaming: bool = True,
    *,
    name: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
    batch_docs: int = 1000,
    seed: int = 0,
    parts: int | None = None,
    workers: int = 1,
    shards: int = 1,
    shard: int = 0,
    force: bool = False,
) -> Path:
    """Stream a Hugging Face dataset through a released tokenizer into a prepared directory.

    Part ``p`` of ``parts`` (default: one per 1B tokens) reads the dataset's shard ``p``, up to
    ``max_tokens / parts`` tokens (whole documents, so slightly more), shuffled in buffers of
    50k documents. Example: ``dataset=allenai/olmo-mix-1124 tokenizer=allenai/OLMo-2-1124-7B``.
    """
    out = Path(out_dir)
    _check_split(val_fraction)
    n_parts = parts or max(1, math.ceil(max_tokens / HF_PART_TOKENS))
    fingerprint = {
        "kind": "hf",
        **{"dataset": dataset, "name": name, "split": split, "text_field": text_field},
        **{"tokenizer": tokenizer, "max_tokens": max_tokens, "parts": n_parts, "seed": seed},
        **{"val_fraction": val_fraction, "min_val_tokens": min_val_tokens},
    }

    def make_plan() -> dict[str, Any]:
        _, transformers = _import_hf()
        tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer} defines no EOS token")
        return {
            "n_parts": n_parts,
            "part_tokens": math.ceil(max_tokens / n_parts),
            "dtype": token_dtype(len(tok)).name,
            "vocab_size": len(tok),
            "eos_token_id": int(tok.eos_token_id),
            "tokenizer": f"transformers AutoTokenizer {tokenizer}",
            "tokenizer_file": None,
            "seed": seed,
            "val_fraction": val_fraction,
            "min_val_tokens": min_val_tokens,
            "source": f"{dataset}" + (f" ({name})" if name else "") + f" split={split}",
            "settings": fingerprint,
            "extra": {"hf": {"dataset": dataset, "name": name, "split": split}},
        }

    plan = ensure_plan(out, fingerprint, make_plan, force)
    job = HFJob(
        dataset, name, split, text_field, tokenizer, streaming, n_parts,
        plan["part_tokens"], batch_docs, plan["eos_token_id"], plan["dtype"],
    )  # fmt: skip
    run_parts(
        out, plan, job, workers=workers, shards=shards, shard=shard, buffer_docs=HF_SHUFFLE_DOCS
    )
    return out


def _check_split(val_fraction: float) -> None:
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction} must lie in (0, 0.5]")


def _field(rows: Iterable[dict[str, Any]], text_field: str) -> Iterator[str]:
    for row in rows:
        if text_field not in row:
            raise ValueError(f"rows have no field {text_field!r}; fields: {sorted(row)}")
        yield row[text_field]


def _import_hf() -> tuple[Any, Any]:
    try:
        import datasets
        import transformers
    except ImportError as e:
        raise ImportError(
            f"preparing Hugging Face corpora needs `datasets` and `transformers` ({e}); "
            "install them with: pip install 'qat-sweep[hf]'"
        ) from e
    return datasets, transformers


# ---- command line -------------------------------------------------------------------------

USAGE = """usage:
  qat-sweep prepare input=PATH[,PATH...] out=DIR [vocab_size=4096] [val_fraction=0.005]
                    [tokenizer=FILE.json] [pattern=*.txt] [min_frequency=2] [part_mb=64]
                    [workers=K] [shards=K shard=I] [force=true]
  qat-sweep prepare check data=NAME [data.KEY=VALUE ...] [paths.data=DIR]   (every token id)
  qat-sweep prepare demo [out=data/demo] [vocab_size=512] [max_bytes=N] [workers=K] [force=true]
  qat-sweep prepare hf dataset=NAME tokenizer=NAME out=DIR max_tokens=N [split=train]
                    [text_field=text] [name=CONFIG] [parts=P] [workers=K] [shards=K shard=I]

Run the same command again to resume an interrupted preparation. workers=K uses K processes;
shards=K shard=I writes only the I-th of K slices (one SLURM array task each, see README)."""


def _paths(value: str) -> list[Path]:
    return [Path(v) for v in value.split(",") if v]


_PARALLEL: dict[str, Callable[[str], Any]] = {"workers": int, "shards": int, "shard": int}
_COMMON: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "val_fraction": float,
    "min_val_tokens": int,
    "seed": int,
    "force": parse_bool,
    **_PARALLEL,
}
TEXT_KEYS: dict[str, Callable[[str], Any]] = {
    "input": _paths,
    "vocab_size": int,
    "tokenizer": Path,
    "pattern": str,
    "min_frequency": int,
    "eos_token": str,
    "part_mb": float,
    **_COMMON,
}
DEMO_KEYS: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "vocab_size": int,
    "max_bytes": int,
    "force": parse_bool,
    "workers": int,
}
HF_KEYS: dict[str, Callable[[str], Any]] = {
    "dataset": str,
    "tokenizer": str,
    "split": str,
    "text_field": str,
    "max_tokens": parse_tokens,  # 250B, 2.5e11 or 250000000000
    "name": str,
    "streaming": parse_bool,
    "batch_docs": int,
    "parts": int,
    **_COMMON,
}


def check_data(overrides: list[str]) -> int:
    """``prepare check data=NAME [data.key=value ...]``: every token id of a data config read
    once (``data.check=full``), then what training will see."""
    from omegaconf import OmegaConf

    from qat_sweep.config import compose_run
    from qat_sweep.data import open_data

    data_cfg = OmegaConf.to_container(compose_run(overrides).data, resolve=True)
    assert isinstance(data_cfg, dict)
    data = open_data(data_cfg | {"check": "full"})
    print(
        f"{data.source}: {len(data.train):,} train + {len(data.val):,} validation tokens, "
        f"vocab {data.vocab_size}, EOS {data.eos_id}: every token id checked"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qat-sweep prepare``; ``argv`` is what follows the subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return 0
    try:
        if args[:1] == ["check"]:
            return check_data(args[1:])
        if args[:1] == ["demo"]:
            from qat_sweep.corpus import build_demo_corpus

            opts = parse_keys(args[1:], DEMO_KEYS, ())
            out = build_demo_corpus(opts.pop("out", Path("data/demo")), **opts)
        elif args[:1] == ["hf"]:
            opts = parse_keys(args[1:], HF_KEYS, ("dataset", "tokenizer", "out", "max_tokens"))
            out = prepare_hf(opts.pop("dataset"), opts.pop("tokenizer"), opts.pop("out"), **opts)
        else:
            opts = parse_keys(args, TEXT_KEYS, ("input", "out"))
            out = prepare_text(opts.pop("input"), opts.pop("out"), **opts)
    except InputError as e:
        print(f"qat-sweep prepare: {e}\n{USAGE}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ImportError) as e:
        print(f"qat-sweep prepare: error: {e}", file=sys.stderr)
        return 2
    if (out / MANIFEST).is_file():
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
