"""Writing a prepared token directory in parts: in parallel, across array tasks, resumably.

Layout of ``out/``::

    plan.json              what each part holds (written once, under a lock, before any part)
    tokenizer.json         the tokenizer, when the project trained or was given one
    train/part-00000.npy   raw token ids (OLMo-core's format), documents in shuffled order
    val/part-00000.npy     the part's held-out documents
    done/part-00000.json   the part's completion marker: token counts and sha256 of both files
    manifest.json          written when every part is done: what training reads

A part's files are written under temporary names, fsynced and renamed; its marker is written
after them, atomically, so a part is complete exactly when its marker exists and the sizes
match it. A killed preparation run again redoes only the parts without a valid marker, and
since each part depends only on the plan and ``(seed, part)``, the result is byte-identical
to an uninterrupted run, whatever the number of workers or array tasks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qat_sweep.common import atomic_open, progress, stale_temps, write_json_atomic
from qat_sweep.data.tokenfiles import FORMAT, FORMAT_VERSION, MANIFEST, SPLITS

PLAN = "plan.json"
LOCK = ".prepare.lock"
DEFAULT_VAL_FRACTION = 0.005
# Eight sequences of the paper's 2048 context: enough for a stable held-out loss.
DEFAULT_MIN_VAL_TOKENS = 8 * 2049
# Everything a preparation writes (and a replaced one removes), including the old format's files.
OWNED = (
    PLAN,
    MANIFEST,
    "tokenizer.json",
    "train",
    "val",
    "done",
    "meta.json",
    "train.bin",
    "val.bin",
)


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for scripts."""
    print(f"[prepare] {message}", file=sys.stderr, flush=True)


def check_split(val_fraction: float) -> None:
    """The held-out share write_part can honour while leaving documents to train on."""
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction} must lie in (0, 0.5]")


class PartJob(Protocol):
    """The documents of each part (picklable: workers receive it)."""

    def documents(self, part: int) -> Iterable[np.ndarray]: ...


def part_path(out: Path, split: str, part: int) -> Path:
    return out / split / f"part-{part:05d}.npy"


def marker_path(out: Path, part: int) -> Path:
    return out / "done" / f"part-{part:05d}.json"


def read_marker(out: Path, part: int, dtype: np.dtype) -> dict[str, Any] | None:
    """The part's marker if the part is complete (files present with the marked sizes)."""
    try:
        marker = json.loads(marker_path(out, part).read_text())
        for split in SPLITS:
            size = part_path(out, split, part).stat().st_size
            if size != marker[split]["tokens"] * dtype.itemsize:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def write_part(
    out: Path,
    part: int,
    documents: Iterable[np.ndarray],
    *,
    dtype: np.dtype,
    seed: int,
    val_fraction: float,
    min_val_tokens: int,
    buffer_docs: int,
) -> dict[str, Any]:
    """Write one part; the marker goes last.

    Documents are shuffled (in buffers of ``buffer_docs``); the first shuffled documents of each
    buffer are held out for validation until they reach ``val_fraction`` of its tokens (and
    ``min_val_tokens`` in the first buffer), always leaving one to train.
    """
    rng = np.random.default_rng([seed, part])
    paths = {s: part_path(out, s, part) for s in SPLITS}
    for path in paths.values():
        for stale in stale_temps(path):
            stale.unlink(missing_ok=True)  # left by a killed run of this part
    hashes = {s: hashlib.sha256() for s in SPLITS}
    tokens, docs = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    with ExitStack() as stack:
        files = {s: stack.enter_context(atomic_open(paths[s], "wb")) for s in SPLITS}
        for k, block in enumerate(_chunks(documents, buffer_docs)):
            order = rng.permutation(len(block))
            ends = np.cumsum([len(block[j]) for j in order])
            target = max(math.ceil(val_fraction * ends[-1]), min_val_tokens if k == 0 else 0)
            n_val = min(int(np.searchsorted(ends, target)) + 1, len(block) - 1)
            for split, chosen in (("val", order[:n_val]), ("train", order[n_val:])):
                picked = [block[j] for j in chosen]
                if not picked:
                    continue
                data = np.concatenate(picked).astype(dtype, copy=False).tobytes()
                files[split].write(data)
                hashes[split].update(data)
                tokens[split] += len(data) // dtype.itemsize
                docs[split] += len(picked)
    marker = {
        "part": part,
        **{
            s: {
                "path": str(paths[s].relative_to(out)),
                "tokens": tokens[s],
                "docs": docs[s],
                "sha256": hashes[s].hexdigest(),
            }
            for s in SPLITS
        },
    }
    write_json_atomic(marker_path(out, part), marker, indent=1)
    return marker


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def prepare_lock(out: Path) -> Iterator[None]:
    """Serialises planning and finishing between array tasks sharing ``out`` (flock)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_plan(
    out: Path, fingerprint: dict[str, Any], make_plan: Callable[[], dict[str, Any]], force: bool
) -> dict[str, Any]:
    """The plan of ``out``: the existing one if made from the same inputs and settings,
    else a new one from ``make_plan`` (``force`` replaces a preparation of other inputs)."""
    with prepare_lock(out):
        existing = None
        if (out / PLAN).is_file():
            existing = json.loads((out / PLAN).read_text())
            if existing.get("fingerprint") == fingerprint:
                return existing
        legacy = (out / "meta.json").exists()
        if existing is not None or legacy or (out / MANIFEST).exists():
            if not force:
                raise FileExistsError(
                    f"{out} already holds token data prepared from other inputs or settings; "
                    f"pass force=true to replace it (or choose another out=)"
                )
            for name in OWNED:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        plan = make_plan() | {"fingerprint": fingerprint}
        write_json_atomic(out / PLAN, plan, indent=1)
        return plan


def _run_one(args: tuple[PartJob, Path, int, dict[str, Any]]) -> tuple[int, dict[str, Any], float]:
    job, out, part, options = args
    start = time.monotonic()
    marker = write_part(out, part, job.documents(part), **options)
    return part, marker, time.monotonic() - start


def _single_threaded_worker() -> None:
    # One core per worker: `tokenizers` would otherwise start a thread per core in each.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


def run_parts(
    out: Path,
    plan: dict[str, Any],
    job: PartJob,
    *,
    workers: int = 1,
    shards: int = 1,
    shard: int = 0,
    buffer_docs: int = 1 << 30,
) -> dict[str, Any] | None:
    """Write this task's incomplete parts (part ``p`` belongs to task ``p % shards``) with
    ``workers`` processes, then the manifest if every part is done; returns it or None.

    Workers are spawned, so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard (the console script has it).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard={shard} must lie in [0, shards={shards})")
    dtype = np.dtype(plan["dtype"])
    n_parts = int(plan["n_parts"])
    mine = [p for p in range(shard, n_parts, shards)]
    todo = [p for p in mine if read_marker(out, p, dtype) is None]
    log(
        f"{out}: {n_parts} parts, {len(mine)} for task {shard}/{shards}, {len(mine) - len(todo)} "
        f"already complete; writing {len(todo)} with {workers} worker(s)"
    )
    options = {
        "dtype": dtype,
        "seed": int(plan["seed"]),
        "val_fraction": float(plan["val_fraction"]),
        "min_val_tokens": math.ceil(int(plan["min_val_tokens"]) / n_parts),
        "buffer_docs": buffer_docs,
    }
    tasks = [(job, out, p, options) for p in todo]
    start, n_tokens = time.monotonic(), 0
    if workers == 1 or len(tasks) <= 1:
        results: Iterable[tuple[int, dict[str, Any], float]] = map(_run_one, tasks)
        pool = None
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with tokenizer threads
        pool = ctx.Pool(min(workers, len(tasks)), initializer=_single_threaded_worker)
        results = pool.imap_unordered(_run_one, tasks)
    try:
        for done, (part, marker, _) in enumerate(progress(results, "parts", len(tasks), "part"), 1):
            n_tokens += marker["train"]["tokens"] + marker["val"]["tokens"]
            rate = n_tokens / max(time.monotonic() - start, 1e-9)
            log(
                f"part {part} done ({done}/{len(tasks)}): {n_tokens:,} tokens, {rate:,.0f} tokens/s"
            )
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.terminate()  # a no-op after close, the end of the workers after an error
            pool.join()
    if tasks:
        elapsed = time.monotonic() - start
        log(
            f"wrote {n_tokens:,} tokens in {elapsed:.1f}s with {workers} worker(s): "
            f"{n_tokens / max(elapsed, 1e-9):,.0f} tokens/s"
        )
    return finish(out, plan)


def finish(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Write ``manifest.json`` once every part has its marker; None while some are missing."""
    dtype = np.dtype(plan["dtype"])
    with prepare_lock(out):
        markers = [read_marker(out, p, dtype) for p in range(int(plan["n_parts"]))]
        missing = [p for p, m in enumerate(markers) if m is None]
        if missing:
            log(
                f"{len(missing)} part(s) still missing (other array tasks?): manifest not yet written"
            )
            return None
        total = {s: sum(m[s]["tokens"] for m in markers if m) for s in SPLITS}
        if total["train"] == 0:
            raise ValueError(f"{out}: no training tokens were written")
        if total["val"] == 0:
            raise ValueError(
                f"{out}: no document could be held out for validation (each part keeps at least "
                f"one to train, and no part has two); split the corpus into more documents (files, "
                f"or a .jsonl with one per line)"
            )
        if total["val"] > total["train"]:
            raise ValueError(
                f"{out}: {total['train'] + total['val']:,} tokens; a validation split of "
                f"{total['val']:,} tokens (val_fraction={plan['val_fraction']}, min_val_tokens="
                f"{plan['min_val_tokens']}) would leave too little for training; add text or "
                f"lower min_val_tokens (then prepare again with force=true)"
            )
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tokenizer": plan["tokenizer"],
            "tokenizer_file": plan.get("tokenizer_file"),
            "vocab_size": plan["vocab_size"],
            "eos_token_id": plan["eos_token_id"],
            "dtype": plan["dtype"],
            "n_tokens": total,
            "n_docs": {s: sum(m[s]["docs"] for m in markers if m) for s in SPLITS},
            "files": {
                s: [{k: m[s][k] for k in ("path", "tokens", "sha256")} for m in markers if m]
                for s in SPLITS
            },
            "source": plan["source"],
            "settings": plan["settings"],
            **plan.get("extra", {}),
        }
        if (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()) == manifest:
            return manifest
        write_json_atomic(out / MANIFEST, manifest, indent=1)
    log(f"wrote {out / MANIFEST}: {total['train']:,} train + {total['val']:,} val tokens")
    return manifest
