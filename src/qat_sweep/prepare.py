"""Turn text into a token data directory (``qat-sweep prepare``).

Local text gets a byte-level BPE trained on the corpus itself (``tokenizers``, offline); full-scale
corpora such as OLMo2-Mix stream from the Hugging Face hub with their released tokenizer. Both
paths append EOS after every document and hold out whole documents for validation, so validation
loss measures generalisation to unseen documents rather than to unseen windows of seen ones.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qat_sweep.config import parse_tokens
from qat_sweep.data import TokenDataWriter, token_dtype, write_token_data

EOS_TOKEN = "<|endoftext|>"
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_VAL_FRACTION = 0.005
# Eight sequences of the paper's 2048 context: enough for a stable held-out loss.
DEFAULT_MIN_VAL_TOKENS = 8 * 2049
ENCODE_CHUNK_DOCS = 256


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for scripts."""
    print(f"[prepare] {message}", file=sys.stderr, flush=True)


class Progress:
    """Rate-limited progress lines for long tokenisation passes."""

    def __init__(self, what: str, every_s: float = 5.0) -> None:
        self.what = what
        self.every_s = every_s
        self.start = self.last = time.monotonic()

    def update(self, docs: int, tokens: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            rate = tokens / max(now - self.start, 1e-9)
            log(f"{self.what}: {docs:,} documents, {tokens:,} tokens ({rate:,.0f} tokens/s)")


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


def iter_documents(files: Iterable[Path]) -> Iterator[str]:
    """Documents in file order: a ``.jsonl`` file holds one per line (``text`` field), any other
    file is one document."""
    for path in files:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        record = json.loads(line)
                        if "text" not in record:
                            raise ValueError(f"{path}:{n} has no 'text' field")
                        yield record["text"]
        else:
            yield path.read_bytes().decode("utf-8", errors="replace")


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


def choose_val_documents(
    doc_tokens: np.ndarray, val_fraction: float, min_val_tokens: int, seed: int = 0
) -> np.ndarray:
    """Boolean mask of held-out documents: a seeded random subset reaching the target size."""
    total = int(doc_tokens.sum())
    target = max(math.ceil(val_fraction * total), min_val_tokens)
    if target > total // 2:
        raise ValueError(
            f"corpus has {total:,} tokens; a validation split of {target:,} tokens "
            f"(val_fraction={val_fraction}, min_val_tokens={min_val_tokens}) would leave too "
            "little for training; add text or lower min_val_tokens"
        )
    order = np.random.default_rng(seed).permutation(len(doc_tokens))
    n_val = int(np.searchsorted(np.cumsum(doc_tokens[order]), target)) + 1
    mask = np.zeros(len(doc_tokens), dtype=bool)
    mask[order[:n_val]] = True
    return mask


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
    source: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Tokenise ``files`` (trained or given tokenizer) and write the data directory.

    Text is streamed from disk twice (tokenizer training, encoding); the token ids of all
    documents are held in memory to split off validation documents, which bounds this path to
    corpora of a few hundred million tokens. Larger corpora go through ``prepare_hf``.
    """
    start = time.monotonic()
    n_bytes = sum(p.stat().st_size for p in files)
    log(f"{len(files):,} files, {n_bytes / 1e6:,.1f} MB")
    if tokenizer is not None:
        tok = Tokenizer.from_file(str(tokenizer))
        if vocab_size is not None and vocab_size != tok.get_vocab_size():
            raise ValueError(
                f"vocab_size={vocab_size} but tokenizer {tokenizer} has "
                f"{tok.get_vocab_size()} tokens; drop vocab_size or the tokenizer"
            )
        description = f"tokenizers file {tokenizer}"
    else:
        vocab_size = vocab_size or DEFAULT_VOCAB_SIZE
        tok = train_bpe(iter_documents(files), vocab_size, min_frequency)
        description = f"byte-level BPE trained on the corpus (vocab {vocab_size})"
        log(
            f"trained byte-level BPE, {tok.get_vocab_size()} tokens, {time.monotonic() - start:.1f}s"
        )
    eos_id = find_eos_id(tok, eos_token)
    # Literal "<|endoftext|>" inside a document is text, not a document boundary.
    tok.encode_special_tokens = True
    dtype = token_dtype(tok.get_vocab_size())
    docs: list[np.ndarray] = []
    progress = Progress("encoded")
    n_tokens = 0
    for chunk in _chunks(iter_documents(files), ENCODE_CHUNK_DOCS):
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            docs.append(np.array([*enc.ids, eos_id], dtype=dtype))
            n_tokens += len(docs[-1])
        progress.update(len(docs), n_tokens)
    progress.update(len(docs), n_tokens, force=True)
    train, val = _split(docs, val_fraction, min_val_tokens, seed)
    out = write_token_data(
        out_dir,
        train,
        val,
        vocab_size=tok.get_vocab_size(),
        eos_id=eos_id,
        tokenizer=description,
        source=source if source is not None else [str(p) for p in files],
        tokenizer_json=tok.to_str(),
        extra={
            "split": {"val_fraction": val_fraction, "min_val_tokens": min_val_tokens, "seed": seed}
        }
        | (extra or {}),
    )
    log(
        f"wrote {out}: {len(train):,} train + {len(val):,} val tokens "
        f"in {time.monotonic() - start:.1f}s"
    )
    return out


def _split(
    docs: list[np.ndarray], val_fraction: float, min_val_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and val token streams, documents kept in corpus order within each split."""
    if len(docs) == 1:
        raise ValueError(
            "the corpus is a single document, so no document can be held out for validation; "
            "split it into several files or a .jsonl with one document per line"
        )
    is_val = choose_val_documents(
        np.array([len(d) for d in docs]), val_fraction, min_val_tokens, seed
    )
    train = np.concatenate([d for d, v in zip(docs, is_val, strict=True) if not v])
    val = np.concatenate([d for d, v in zip(docs, is_val, strict=True) if v])
    return train, val


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
    force: bool = False,
) -> Path:
    """Prepare local text files and directories (searched recursively for ``pattern``)."""
    _check_out(out_dir, force)
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
        source=[str(Path(p)) for p in inputs],
    )


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
    force: bool = False,
) -> Path:
    """Stream a Hugging Face dataset through a released tokenizer into a data directory.

    The first documents of the stream (until the validation target) form the validation split,
    the following ones train, up to ``max_tokens`` in total (whole documents, so slightly more).
    Example: ``dataset=allenai/olmo-mix-1124 tokenizer=allenai/OLMo-2-1124-7B``.
    """
    _check_out(out_dir, force)
    datasets, transformers = _import_hf()
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer} defines no EOS token")
    eos_id = int(tok.eos_token_id)
    rows = datasets.load_dataset(dataset, name, split=split, streaming=streaming)
    val_target = max(math.ceil(val_fraction * max_tokens), min_val_tokens)
    progress = Progress(f"{dataset} -> {out_dir}", every_s=30.0)
    n_docs = 0
    with TokenDataWriter(
        out_dir,
        vocab_size=len(tok),
        eos_id=eos_id,
        tokenizer=f"transformers AutoTokenizer {tokenizer}",
        source=f"{dataset}" + (f" ({name})" if name else "") + f" split={split}",
        extra={"hf": {"dataset": dataset, "name": name, "split": split, "text_field": text_field}},
    ) as writer:
        for texts in _chunks(_field(rows, text_field), batch_docs):
            encoded = tok(texts, add_special_tokens=False)["input_ids"]
            chunk: dict[str, list[list[int]]] = {"val": [], "train": []}
            n_val = writer.n_tokens["val"]
            for ids in encoded:
                in_val = n_val < val_target
                n_val += (len(ids) + 1) * in_val
                chunk["val" if in_val else "train"].append([*ids, eos_id])
            for split_name, seqs in chunk.items():
                if seqs:
                    writer.append(split_name, np.concatenate(seqs))
            n_docs += len(texts)
            total = writer.n_tokens["train"] + writer.n_tokens["val"]
            progress.update(n_docs, total)
            if total >= max_tokens:
                break
        progress.update(n_docs, writer.n_tokens["train"] + writer.n_tokens["val"], force=True)
        return writer.commit()


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


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_out(out_dir: str | Path, force: bool) -> None:
    if (Path(out_dir) / "meta.json").exists() and not force:
        raise FileExistsError(
            f"{out_dir} already holds token data; pass force=true to overwrite it"
        )


# ---- command line -------------------------------------------------------------------------

USAGE = """usage:
  qat-sweep prepare input=PATH[,PATH...] out=DIR [vocab_size=4096] [val_fraction=0.005]
                    [tokenizer=FILE.json] [pattern=*.txt] [min_frequency=2] [force=true]
  qat-sweep prepare demo [out=data/demo] [vocab_size=512] [max_bytes=N] [force=true]
  qat-sweep prepare hf dataset=NAME tokenizer=NAME out=DIR max_tokens=N [split=train]
                    [text_field=text] [name=CONFIG] [streaming=true] [force=true]"""


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _paths(value: str) -> list[Path]:
    return [Path(v) for v in value.split(",") if v]


_COMMON: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "val_fraction": float,
    "min_val_tokens": int,
    "force": _bool,
}
TEXT_KEYS: dict[str, Callable[[str], Any]] = {
    "input": _paths,
    "vocab_size": int,
    "tokenizer": Path,
    "pattern": str,
    "min_frequency": int,
    "eos_token": str,
    "seed": int,
    **_COMMON,
}
DEMO_KEYS: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "vocab_size": int,
    "max_bytes": int,
    "force": _bool,
}
HF_KEYS: dict[str, Callable[[str], Any]] = {
    "dataset": str,
    "tokenizer": str,
    "split": str,
    "text_field": str,
    "max_tokens": parse_tokens,  # 250B, 2.5e11 or 250000000000
    "name": str,
    "streaming": _bool,
    "batch_docs": int,
    **_COMMON,
}


class UsageError(ValueError):
    """A malformed command line; reported with the usage text."""


def parse_args(
    args: list[str], spec: dict[str, Callable[[str], Any]], required: tuple[str, ...]
) -> dict[str, Any]:
    """Parse ``key=value`` arguments against ``spec``, naming any unknown or missing keys."""
    parsed: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r}")
        if key not in spec:
            raise UsageError(f"unknown key {key!r}; allowed: {', '.join(sorted(spec))}")
        try:
            parsed[key] = spec[key](value)
        except ValueError as e:
            raise UsageError(f"bad value for {key}: {e}") from e
    missing = [k for k in required if k not in parsed]
    if missing:
        raise UsageError(f"missing required key(s): {', '.join(missing)}")
    return parsed


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qat-sweep prepare``; ``argv`` is what follows the subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return 0
    try:
        if args[:1] == ["demo"]:
            from qat_sweep.corpus import build_demo_corpus

            opts = parse_args(args[1:], DEMO_KEYS, ())
            build_demo_corpus(opts.pop("out", Path("data/demo")), **opts)
        elif args[:1] == ["hf"]:
            opts = parse_args(args[1:], HF_KEYS, ("dataset", "tokenizer", "out", "max_tokens"))
            prepare_hf(opts.pop("dataset"), opts.pop("tokenizer"), opts.pop("out"), **opts)
        else:
            opts = parse_args(args, TEXT_KEYS, ("input", "out"))
            prepare_text(opts.pop("input"), opts.pop("out"), **opts)
    except UsageError as e:
        print(f"qat-sweep prepare: {e}\n{USAGE}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ImportError) as e:
        print(f"qat-sweep prepare: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
