"""The offline demo corpus: the Python standard library's own sources, tokenised locally.

Every machine that runs qat-sweep has these files, so the demo and the tests train on real,
structured text without a download. A 512-token BPE keeps the demo models' embedding and
``lm_head`` small enough for CPU.
"""

from __future__ import annotations

import fcntl
import platform
import sysconfig
import time
from pathlib import Path
from typing import Any

from qat_sweep.data.prepare.shards import log
from qat_sweep.data.prepare.text_corpus import prepare_files
from qat_sweep.data.tokenfiles import read_manifest

CORPUS_VERSION = 2  # 2: OLMo-core token files in parts plus manifest.json
# About 2.1 bytes per token at vocab 512: roughly 3.8M tokens.
DEFAULT_MAX_BYTES = 8_000_000
DEMO_VAL_FRACTION = 0.01
DEMO_MIN_VAL_TOKENS = 8 * 513
DEMO_PART_MB = 1.0  # eight parts: the demo exercises the same parallel path as a real corpus
# Tests are repetitive and site-packages differs between machines; encodings/ is code-page
# tables, not code.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings"}
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(max_bytes: int) -> list[Path]:
    """Standard-library ``.py`` files in sorted order, the longest prefix within ``max_bytes``."""
    root = stdlib_root()
    candidates = sorted(
        p
        for p in root.rglob("*.py")
        if p.is_file() and not EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1])
    )
    chosen: list[Path] = []
    total = 0
    for path in candidates:
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        chosen.append(path)
        total += size
    if len(chosen) < 2:
        raise ValueError(f"max_bytes={max_bytes} selects fewer than two files under {root}")
    return chosen


def demo_settings(vocab_size: int, max_bytes: int) -> dict[str, Any]:
    """Everything the demo corpus's bytes depend on; a directory built with other settings is rebuilt."""
    return {
        "corpus_version": CORPUS_VERSION,
        "python": platform.python_version(),
        "stdlib": str(stdlib_root()),
        "vocab_size": vocab_size,
        "max_bytes": max_bytes,
        "val_fraction": DEMO_VAL_FRACTION,
        "min_val_tokens": DEMO_MIN_VAL_TOKENS,
        "part_mb": DEMO_PART_MB,
    }


def build_demo_corpus(
    out_dir: str | Path = "data/demo",
    vocab_size: int = 512,
    max_bytes: int = DEFAULT_MAX_BYTES,
    force: bool = False,
    workers: int = 1,
) -> Path:
    """Build (or reuse) the demo data directory; returns its path.

    Idempotent and safe for concurrent callers (parallel demo runs share one directory): a file
    lock serialises builders, and a directory already built with the same settings is returned
    as it is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(vocab_size, max_bytes)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _built_with(out, settings):
            return out
        start = time.monotonic()
        files = stdlib_sources(max_bytes)
        log(f"building the demo corpus in {out} from {len(files)} stdlib files")
        prepare_files(
            files,
            out,
            vocab_size=vocab_size,
            val_fraction=DEMO_VAL_FRACTION,
            min_val_tokens=DEMO_MIN_VAL_TOKENS,
            part_mb=DEMO_PART_MB,
            workers=workers,
            force=True,  # the demo's own directory: other settings are rebuilt, not refused
            source=[f"python {settings['python']} stdlib {settings['stdlib']}"],
            extra={"demo": settings},
        )
        log(f"demo corpus ready in {time.monotonic() - start:.1f}s")
    return out


def _built_with(out: Path, settings: dict[str, Any]) -> bool:
    try:
        return read_manifest(out).get("demo") == settings
    except (FileNotFoundError, ValueError):
        return False
