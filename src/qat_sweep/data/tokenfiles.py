"""Token files in OLMo-core's format: finding them, reading them, checking them.

A token file is a 1-D array of token ids written raw with ``np.memmap`` (uint32, or uint16 for a
vocabulary of at most 65536 ids; no ``.npy`` header despite the usual suffix), documents
concatenated with the EOS token. AI2 publishes OLMo-mix in this format, many files per mix, and
``qat-sweep prepare`` writes it too: a prepared directory is token files plus ``manifest.json``.

This module needs numpy only (no torch), so planning can check data cheaply.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qat_sweep.common import creatable_dir_problem

DTYPES = ("uint16", "uint32")
MANIFEST = "manifest.json"
FORMAT = "qat-sweep-tokens"
FORMAT_VERSION = 2
SPLITS = ("train", "val")
HOW_TO_CREATE = (
    "create it with `qat-sweep prepare demo out=DIR` (offline demo corpus), "
    "`qat-sweep prepare input=PATH out=DIR vocab_size=4096` (local text) or "
    "`qat-sweep prepare hf dataset=... tokenizer=... out=DIR max_tokens=...`, or train from "
    "token files directly with data=npy data.paths=[...]"
)
# Start-up check: this many files (evenly spread, first and last included), a few chunks each.
SAMPLE_FILES = 64
SAMPLE_CHUNK = 4096
FULL_CHECK_CHUNK = 1 << 24


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 halves disk and page cache."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


class TokenFiles:
    """The concatenation of token files, each memory-mapped on first use (no copy, no load).

    Offsets are in tokens over the concatenation; ``read`` crosses file boundaries.
    """

    def __init__(self, paths: list[Path], dtype: np.dtype | str) -> None:
        self.dtype = np.dtype(dtype)
        self.paths = tuple(paths)
        sizes = []
        for path in self.paths:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"token file {path} does not exist") from None
            if size % self.dtype.itemsize:
                raise ValueError(
                    f"token file {path}: {size} bytes is not a multiple of {self.dtype.itemsize} "
                    f"({self.dtype.name}); the file is truncated or not {self.dtype.name} token ids "
                    f"(data.dtype: one of {', '.join(DTYPES)})"
                )
            sizes.append(size // self.dtype.itemsize)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def file_tokens(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def _map(self, i: int) -> np.memmap:
        if i not in self._maps:
            self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r")
        return self._maps[i]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` of the concatenation."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"tokens [{start}, {start + n}) outside [0, {len(self)})")
        if n == 0:
            return np.empty(0, dtype=self.dtype)
        parts = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while n > 0:
            lo = start - int(self.offsets[i])
            take = min(n, self.file_tokens(i) - lo)
            if take > 0:
                parts.append(self._map(i)[lo : lo + take])
                start, n = start + take, n - take
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def locate(self, offset: int) -> tuple[Path, int]:
        """The file holding token ``offset`` of the concatenation and the offset inside it."""
        i = int(np.searchsorted(self.offsets, offset, side="right")) - 1
        return self.paths[i], offset - int(self.offsets[i])


# ----------------------------------------------------------------------------- checks


def check_token_ids(files: TokenFiles, vocab_size: int, eos_id: int, full: bool = False) -> None:
    """Raise naming file and offset if a token id is >= ``vocab_size``.

    By default a sample (the start, middle and end of up to 64 files): enough to catch a wrong
    ``data.dtype`` or vocabulary, which corrupts every file alike. ``full`` reads every token.
    """
    itemsize = files.dtype.itemsize
    nonempty = [i for i in range(len(files.paths)) if files.file_tokens(i)]
    if not nonempty:
        raise ValueError(f"the token files hold no tokens: {_describe(files.paths)}")
    if full:
        chunks = [
            (i, lo, min(FULL_CHECK_CHUNK, files.file_tokens(i) - lo))
            for i in nonempty
            for lo in range(0, files.file_tokens(i), FULL_CHECK_CHUNK)
        ]
    else:
        picked = sorted(
            {
                nonempty[j]
                for j in np.linspace(0, len(nonempty) - 1, SAMPLE_FILES).round().astype(int)
            }
        )
        chunks = []
        for i in picked:
            size, take = files.file_tokens(i), min(SAMPLE_CHUNK, files.file_tokens(i))
            chunks += [(i, lo, take) for lo in sorted({0, (size - take) // 2, size - take})]
    seen_eos, sampled = False, 0
    for i, lo, n in chunks:
        ids = np.asarray(files._map(i)[lo : lo + n])
        bad = np.flatnonzero(ids >= vocab_size)
        if bad.size:
            at = lo + int(bad[0])
            raise ValueError(
                f"token file {files.paths[i]}: id {int(ids[bad[0]])} at token {at} (byte "
                f"{at * itemsize}) is >= data.vocab_size={vocab_size}; the file does not hold "
                f"{files.dtype.name} ids of this vocabulary (a wrong data.dtype: uint16 files read "
                f"as uint32 give ids beyond the vocabulary) or data.vocab_size is wrong"
            )
        if files.dtype == np.uint16 and n >= 512 and ids[1::2].max() == 0 < ids[0::2].max():
            raise ValueError(
                f"token file {files.paths[i]}: every second uint16 is 0 from token {lo}, the "
                f"pattern of uint32 ids read as uint16; set data.dtype=uint32"
            )
        seen_eos = seen_eos or bool((ids == eos_id).any())
        sampled += n
    if not seen_eos and sampled >= 65536:
        print(
            f"[qat-sweep] warning: EOS id {eos_id} does not occur in {sampled:,} sampled tokens "
            f"of {_describe(files.paths)}; is data.eos_token_id right?",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DataSpec:
    """Where a data config's tokens are and how to read them (files found, nothing mapped)."""

    train: list[Path]
    val: list[Path]  # empty: validation is held out of ``train`` (``val_fraction``)
    dtype: np.dtype
    vocab_size: int
    eos_id: int
    source: str  # for messages: the directory, mix file or paths
    val_fraction: float = 0.0
    val_block: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def read_mix(mix: str | Path, root: str | None, tokenizer: str | None) -> list[str]:
    """Paths listed in an OLMo-core mix file: one per line, or ``label,path``; ``#`` comments.

    ``{TOKENIZER}`` in a path becomes ``data.tokenizer``; relative paths are below ``data.root``.
    """
    path = Path(mix)
    if not path.is_file():
        raise FileNotFoundError(f"mix file {path} (data.mix) does not exist")
    entries = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = line.split(",", 1)[1].strip() if "," in line else line
        if "{TOKENIZER}" in entry:
            if not tokenizer:
                raise ValueError(f"{path}:{n} uses {{TOKENIZER}}; set data.tokenizer")
            entry = entry.replace("{TOKENIZER}", tokenizer)
        entries.append(entry)
    if not entries:
        raise ValueError(f"mix file {path} (data.mix) lists no token files")
    if root is None and any(not os.path.isabs(e) for e in entries):
        raise ValueError(f"mix file {path} lists relative paths; set data.root to their base")
    return entries


def resolve_paths(entries: list[str], root: str | None, key: str) -> list[Path]:
    """Files named by ``entries`` (paths or globs, relative to ``root``), in the given order."""
    found: list[Path] = []
    for entry in entries:
        full = entry if root is None or os.path.isabs(entry) else os.path.join(root, entry)
        if glob.has_magic(full):
            matches = sorted(glob.glob(full))
            if not matches:
                raise FileNotFoundError(f"{key} entry {entry!r} ({full}) matches no file")
            found += [Path(m) for m in matches]
        elif not os.path.isfile(full):
            raise FileNotFoundError(f"token file {full} ({key}) does not exist")
        else:
            found.append(Path(full))
    return found


def resolve_data(cfg: Mapping[str, Any]) -> DataSpec:
    """The token files a data config names: a prepared ``dir`` or ``paths``/``mix`` (data=npy)."""
    if cfg.get("dir"):
        if cfg.get("paths") or cfg.get("mix"):
            raise ValueError("set data.dir (a prepared directory) or data.paths/data.mix, not both")
        return _prepared(Path(str(cfg["dir"])))
    root = None if cfg.get("root") is None else str(cfg["root"])
    entries = [str(p) for p in (cfg.get("paths") or [])]
    if cfg.get("mix"):
        entries += read_mix(str(cfg["mix"]), root, cfg.get("tokenizer"))
    if not entries:
        raise ValueError(
            f"data {cfg.get('name')!r} names no token files: set data.paths=[...] (paths or "
            f"globs) or data.mix=FILE, or data.dir to a prepared directory; {HOW_TO_CREATE}"
        )
    for key in ("vocab_size", "eos_token_id"):
        if cfg.get(key) is None:
            raise ValueError(
                f"data.{key} is not set; token files do not record it (see conf/data/npy.yaml)"
            )
    vocab, eos, dtype = int(cfg["vocab_size"]), int(cfg["eos_token_id"]), str(cfg.get("dtype"))
    if dtype not in DTYPES:
        raise ValueError(f"data.dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    if dtype == "uint16" and vocab > 65536:
        raise ValueError(
            f"data.dtype=uint16 cannot hold ids of data.vocab_size={vocab}; use uint32"
        )
    if not 0 <= eos < vocab:
        raise ValueError(f"data.eos_token_id={eos} is outside the vocabulary [0, {vocab})")
    val_entries = [str(p) for p in (cfg.get("val_paths") or [])]
    fraction, block = float(cfg.get("val_fraction") or 0), int(cfg.get("val_block") or 0)
    if not val_entries and not (0 < fraction <= 0.5 and block > 0):
        raise ValueError(
            f"validation needs data.val_paths or 0 < data.val_fraction <= 0.5 and data.val_block "
            f"> 0, got val_fraction={fraction}, val_block={block}"
        )
    source = f"data.mix={cfg['mix']}" if cfg.get("mix") else f"data.paths={_describe(entries)}"
    return DataSpec(
        train=resolve_paths(entries, root, "data.paths" if not cfg.get("mix") else "data.mix"),
        val=resolve_paths(val_entries, root, "data.val_paths"),
        dtype=np.dtype(dtype),
        vocab_size=vocab,
        eos_id=eos,
        source=source,
        val_fraction=fraction,
        val_block=block,
    )


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of a prepared directory, checked for the keys readers rely on."""
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise FileNotFoundError(f"token data directory {data_dir} does not exist; {HOW_TO_CREATE}")
    if not path.is_file():
        legacy = (
            " (it holds the old train.bin/meta.json format)"
            if (data_dir / "meta.json").exists()
            else ""
        )
        raise FileNotFoundError(
            f"{path} is missing: {data_dir} is not a prepared corpus{legacy} or its preparation "
            f"did not finish (run the same prepare command again to resume it); {HOW_TO_CREATE}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-prepare: {HOW_TO_CREATE}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest; re-prepare: {HOW_TO_CREATE}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has version {manifest.get('version')}, this qat-sweep reads "
            f"{FORMAT_VERSION}; re-prepare: {HOW_TO_CREATE}"
        )
    missing = [k for k in ("vocab_size", "eos_token_id", "dtype", "files") if k not in manifest]
    if missing:
        raise ValueError(f"{path} lacks key(s) {missing}; re-prepare: {HOW_TO_CREATE}")
    return manifest


def _prepared(data_dir: Path) -> DataSpec:
    manifest = read_manifest(data_dir)
    files: dict[str, list[Path]] = {}
    for split in SPLITS:
        files[split] = []
        for entry in manifest["files"].get(split, []):
            path = data_dir / entry["path"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} (listed in {data_dir / MANIFEST}) is missing")
            expected = int(entry["tokens"]) * np.dtype(manifest["dtype"]).itemsize
            if path.stat().st_size != expected:
                raise ValueError(
                    f"{path} has {path.stat().st_size} bytes but {MANIFEST} says "
                    f"{entry['tokens']} {manifest['dtype']} tokens ({expected} bytes); the "
                    f"directory is corrupt, re-prepare it: {HOW_TO_CREATE}"
                )
            files[split].append(path)
    if not files["val"]:
        raise ValueError(f"{data_dir / MANIFEST} lists no validation files")
    return DataSpec(
        train=files["train"],
        val=files["val"],
        dtype=np.dtype(manifest["dtype"]),
        vocab_size=int(manifest["vocab_size"]),
        eos_id=int(manifest["eos_token_id"]),
        source=str(data_dir),
        meta=manifest,
    )


def data_identity(cfg: Mapping[str, Any], data_root: str) -> dict[str, Any]:
    """What in a data config decides the tokens a run sees (part of its run key).

    Paths below ``paths.data`` are kept relative to it, so moving the data root keeps the keys.
    """

    def rel(value: Any) -> Any:
        text = str(value)
        inside = bool(data_root) and text.startswith(data_root.rstrip("/") + "/")
        return os.path.relpath(text, data_root) if inside else text

    identity: dict[str, Any] = {"name": cfg.get("name"), "dir": rel(cfg.get("dir", ""))}
    if not cfg.get("dir"):
        for key in ("root", "mix", "tokenizer", "dtype", "vocab_size", "eos_token_id"):
            identity[key] = (
                rel(cfg[key]) if key in ("root", "mix") and cfg.get(key) else cfg.get(key)
            )
        for key in ("paths", "val_paths"):
            identity[key] = [rel(p) for p in cfg.get(key) or []]
        if not identity["val_paths"]:
            identity |= {"val_fraction": cfg.get("val_fraction"), "val_block": cfg.get("val_block")}
    return identity


def needs_build(cfg: Mapping[str, Any]) -> bool:
    """A buildable corpus (the demo) that is not built yet."""
    built = bool(cfg.get("dir")) and (Path(str(cfg["dir"])) / MANIFEST).exists()
    return bool(cfg.get("dir") and cfg.get("build_if_missing")) and not built


def data_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why a data config cannot feed a run, from file names and sizes only (None: fine)."""
    if needs_build(cfg):  # built by the first run that needs it (under a lock): can it be?
        return creatable_dir_problem("data.dir", str(cfg["dir"]), "the corpus")
    try:
        spec = resolve_data(cfg)
        if not spec.val:  # validation held out of the training files: enough of them?
            tokens = sum(p.stat().st_size for p in spec.train) // spec.dtype.itemsize
            held_out_blocks(tokens, spec.val_block, round(1 / spec.val_fraction))
    except FileNotFoundError as e:
        return f"data {cfg.get('name')!r}: {e} — it is not prepared{_see_config(cfg)}"
    except ValueError as e:
        return f"data {cfg.get('name')!r}: {e}"
    return None


def held_out_blocks(n_tokens: int, block: int, stride: int) -> tuple[int, int, int]:
    """(blocks, offset of the first validation block, validation blocks) of ``n_tokens`` cut
    into blocks of ``block`` with every ``stride``-th held out; ValueError when too few."""
    n_blocks = n_tokens // block
    offset = min(stride // 2, n_blocks // 2)
    n_val = -(-(n_blocks - offset) // stride)
    if n_blocks < 2 or 2 * n_val * block > n_tokens:
        raise ValueError(
            f"{n_tokens:,} tokens make {n_blocks} block(s) of data.val_block={block}: too few "
            "to hold one out for validation and train on the rest; lower data.val_block or "
            "give data.val_paths"
        )
    return n_blocks, offset, n_val


def data_extent(cfg: Mapping[str, Any]) -> tuple[int, int] | None:
    """(tokens, vocabulary size) of a data config's files, validation ones excepted where they
    are files of their own, from file sizes only (None: not prepared or not readable yet, which
    `data_problem` reports). Held-out blocks count in: a bound never overstating the passes."""
    if needs_build(cfg):
        return None
    try:
        spec = resolve_data(cfg)
    except (FileNotFoundError, ValueError):
        return None
    return sum(p.stat().st_size for p in spec.train) // spec.dtype.itemsize, spec.vocab_size


def _see_config(cfg: Mapping[str, Any]) -> str:
    """' (see <its file>)': the data option's file where it is, never a path that is not."""
    from qat_sweep.config_dirs import find, search_dirs

    path = find(search_dirs("conf"), f"data/{cfg.get('name')}.yaml")
    return f" (see {path})" if path else ""


def _describe(items: tuple[Path, ...] | list[Any]) -> str:
    names = [str(p) for p in items]
    return (
        ", ".join(names) if len(names) <= 3 else f"{names[0]}, ... {names[-1]} ({len(names)} files)"
    )
