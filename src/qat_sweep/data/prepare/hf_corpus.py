"""A Hugging Face dataset into a prepared token directory: streamed through the dataset's
released tokenizer (e.g. OLMo2-Mix with the OLMo-2 tokenizer), one dataset shard per part."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qat_sweep.data.prepare.shards import (
    DEFAULT_MIN_VAL_TOKENS,
    DEFAULT_VAL_FRACTION,
    _chunks,
    check_split,
    ensure_plan,
    run_parts,
)
from qat_sweep.data.tokenfiles import token_dtype

HF_PART_TOKENS = 1_000_000_000
HF_SHUFFLE_DOCS = 50_000


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
    check_split(val_fraction)
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
