"""Turn text into a prepared token directory (``qat-sweep prepare``).

Local text gets a byte-level BPE trained on the corpus itself (``tokenizers``, offline); full-scale
corpora such as OLMo2-Mix stream from the Hugging Face hub with their released tokenizer. Both
append EOS after every document, write OLMo-core token files in parts (``shards``: parallel with
``workers=K``, split across SLURM array tasks with ``shards=K shard=I``, resumable), shuffle
documents and hold out whole documents for validation, so validation loss measures
generalisation to unseen documents rather than to unseen windows of seen ones.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qat_sweep.common import InputError, bounded_number, parse_bool, parse_keys, parse_tokens
from qat_sweep.data.prepare.hf_corpus import prepare_hf
from qat_sweep.data.prepare.text_corpus import prepare_text
from qat_sweep.data.tokenfiles import MANIFEST

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


_COUNT = bounded_number(1, whole=True)  # workers, shards, vocabulary sizes...
_PARALLEL: dict[str, Callable[[str], Any]] = {
    "workers": _COUNT,
    "shards": _COUNT,
    "shard": bounded_number(0, whole=True),
}
_COMMON: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "val_fraction": bounded_number(0, 0.5, low_open=True),
    "min_val_tokens": bounded_number(0, whole=True),
    "seed": bounded_number(0, whole=True),
    "force": parse_bool,
    **_PARALLEL,
}
TEXT_KEYS: dict[str, Callable[[str], Any]] = {
    "input": _paths,
    "vocab_size": _COUNT,
    "tokenizer": Path,
    "pattern": str,
    "min_frequency": _COUNT,
    "eos_token": str,
    "part_mb": bounded_number(0, low_open=True),
    **_COMMON,
}
DEMO_KEYS: dict[str, Callable[[str], Any]] = {
    "out": Path,
    "vocab_size": _COUNT,
    "max_bytes": _COUNT,
    "force": parse_bool,
    "workers": _COUNT,
}
HF_KEYS: dict[str, Callable[[str], Any]] = {
    "dataset": str,
    "tokenizer": str,
    "split": str,
    "text_field": str,
    "max_tokens": parse_tokens,  # 250B, 2.5e11 or 250000000000
    "name": str,
    "streaming": parse_bool,
    "batch_docs": _COUNT,
    "parts": _COUNT,
    **_COMMON,
}


def check_data(overrides: list[str]) -> int:
    """``prepare check data=NAME [data.key=value ...]``: every token id of a data config read
    once (``data.check=full``), then what training will see."""
    from omegaconf import OmegaConf

    from qat_sweep.config.compose import compose_run
    from qat_sweep.data.batches import open_data

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
            from qat_sweep.data.prepare.corpus import build_demo_corpus

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
