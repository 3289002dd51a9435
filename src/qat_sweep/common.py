"""Small helpers every layer shares: atomic files, counts, ``key=value`` arguments, JSON values,
the device word and typed configs.

Kept free of torch, numpy and Hydra at import (the device and config helpers import theirs
when called) so that plan, prepare's workers and the analysis can all import it cheaply. Each helper is the one implementation of its job in the tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any


class InputError(ValueError):
    """Bad input (an argument, a file): the message names the key, the value and what is
    allowed; every command turns it into exit code 2 with that message."""


# --- files: written under a unique temp name beside the target, fsynced, renamed over it ---


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """A file that replaces ``path`` only once the block finishes; readers never see half of it,
    and once it returns the new content and the rename are on disk. Its mode is what the umask
    gives a new file (0644 under 022), as for any file the tool opens.

    The temp name (``.<name>.<random>.tmp``) is unique, so concurrent writers never share one;
    on an exception it is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: collaborators read
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a crash


def current_umask() -> int:
    """The process's umask, read without changing it (a change would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (macOS): read it by setting it, and set it back at once
    os.umask(mask)
    return mask


def user_cache_dir() -> Path:
    """qat-sweep's cache outside any run (wandb sync's logs, matplotlib's font cache):
    ``$XDG_CACHE_HOME/qat-sweep``, else ``~/.cache/qat-sweep``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qat-sweep"


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stale_temps(path: Path | str) -> list[Path]:
    """Temp files `atomic_open` left beside ``path`` when its process was killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def write_atomic(path: Path | str, data: str | bytes) -> None:
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json_atomic(path: Path | str, obj: Any, indent: int = 2) -> None:
    """JSON with NaN refused (use `json_safe` first for float data), written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, allow_nan=False, default=str) + "\n")


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy, without numpy
        return json_safe(value.tolist())
    return finite_or_none(value) if isinstance(value, float) else value


def finite_or_none(value: float) -> float | None:
    """A number JSON and wandb can hold: NaN and infinities become None."""
    return float(value) if math.isfinite(value) else None


# --- counts: one grammar for tokens, parameters and hidden sizes on every command line ---

_COUNT = re.compile(r"\s*([0-9_.]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*")
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
COUNT_EXAMPLES = "2000000, 2e6, 2_000_000, 2M or 20B"


def _count(value: Any, name: str) -> Decimal:
    """The exact count in ``value`` (an int, a float or text like '1.5M'), finite and > 0."""
    match = None if isinstance(value, bool) else _COUNT.fullmatch(str(value))
    try:
        digits, suffix = match.groups() if match else ("", "")
        number = Decimal(digits.replace("_", "")) * _SCALE[suffix.upper()]
    except InvalidOperation:  # no match, or digits like '.' that are no number
        raise InputError(f"{name}={value}: not a count (use e.g. {COUNT_EXAMPLES})") from None
    if not number > 0:
        raise InputError(f"{name}={value}: must be a finite number > 0")
    return number


def parse_count(value: Any, name: str = "count") -> float:
    """'20e9', '20B', '100M', '1.5T', '20_000' (K/M/B/G/T in either case) -> a float > 0."""
    return float(_count(value, name))


def parse_tokens(value: Any, name: str = "tokens") -> int:
    """A token budget: a count (same grammar as `parse_count`) that is a whole number."""
    number = _count(value, name)
    if number != number.to_integral_value():
        raise InputError(f"{name}={value}: must be a whole number of tokens")
    return int(number)


def format_count(count: float, digits: int = 4) -> str:
    """Short form of a count (run keys, plot labels, tables): 10000000000 -> '10B',
    2500000 -> '2.5M', 74323456 -> '74.32M' (``digits`` significant digits; run keys use 4)."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.{digits}g}{suffix}"
    return f"{count:.{digits}g}"


def format_loss(loss: float | None) -> str:
    """A loss or delta as every command prints it: 4 decimals, '-' when there is none."""
    return "-" if loss is None or not math.isfinite(loss) else format_number(loss, 4)


def format_hours(hours: float) -> str:
    """GPU-hours for a table: '119,387', '25', '0.12'."""
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.2g}"


def format_duration(seconds: float | None) -> str:
    """A wall time for a person: '45s', '12m05s', '3h07m', '2d04h'; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_number(value: float | None, decimals: int | None = None, digits: int = 4) -> str:
    """A number for a person: ``decimals`` fixed places for an ordinary magnitude (losses: 4),
    else ``digits`` significant ones, so no result prints as a long run of digits
    (1.01e+304 and 1.2e+07, never 10,142,320,...); None and NaN read 'n/a'."""
    if value is None or math.isnan(value):
        return "n/a"
    if decimals is not None and abs(value) < 1e6:
        return f"{value:.{decimals}f}"
    return f"{value:.{digits}g}"


# --- progress of long loops, on stderr ---

_progress_on = True


def quiet_progress() -> None:
    """No progress bars for the rest of this process (a command printing JSON)."""
    global _progress_on
    _progress_on = False


def progress(
    items: Iterable[Any], desc: str, total: int | None = None, unit: str = "it"
) -> Iterable[Any]:
    """``items`` with a tqdm bar on stderr while they are consumed; no bar when stderr is not a
    terminal (logs, CI, pipes) or after quiet_progress(). The bar clears itself when done."""
    from tqdm import tqdm

    shown = _progress_on and sys.stderr.isatty()
    return tqdm(items, desc, total, leave=False, file=sys.stderr, unit=unit, disable=not shown)


# --- command-line words ---


@dataclasses.dataclass(frozen=True)
class Bound:
    """The finite numbers a field allows: ``low`` and ``high`` ends, each closed or open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def describe(self, whole: bool) -> str:
        kind = "a whole number" if whole else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_end(self.low)}, {_end(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_end(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_end(self.high)}"
        return f"a finite {kind[2:]}"


def _end(x: float) -> str:
    """An end of a bound as written: whole ends in full (a seed's 2**63 - 1), others short."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def bounded_number(
    low: float | None = None,
    high: float | None = None,
    *,
    whole: bool = False,
    low_open: bool = False,
) -> Callable[[str], Any]:
    """A parser of a finite number within a bound (for `parse_keys` specs): 'nan', 'inf' and
    values out of range raise ValueError saying what is allowed, as config keys do."""
    bound = Bound(low, high, low_open=low_open)

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if whole else float(text)
        except ValueError:
            value = math.nan
        if not bound.allows(value):
            raise ValueError(f"must be {bound.describe(whole)}")
        return value

    return parse


def bounded_arg(
    low: float | None = None,
    high: float | None = None,
    *,
    whole: bool = False,
    low_open: bool = False,
) -> Callable[[str], Any]:
    """`bounded_number` as an argparse ``type``: its error names the value."""
    number = bounded_number(low, high, whole=whole, low_open=low_open)

    def parse(text: str) -> int | float:
        try:
            return number(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    return parse


def creatable_dir_problem(key: str, value: str | Path, what: str) -> str | None:
    """Why ``what`` cannot be created at directory ``value`` (config key ``key``) by this user
    (None: it can): its nearest existing ancestor must be a directory this user may write to."""
    path = Path(value).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"{key}={value}: {existing} is a file, not a directory; give a directory"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    return (
        f"{key}={value}: cannot create {what} there ({existing} is not writable by this "
        "user); give a directory you can write to"
    )


def wants_help(argv: list[str]) -> bool:
    """Whether a command's arguments ask for its help (-h or --help anywhere)."""
    return any(arg in ("-h", "--help") for arg in argv)


def command_hint(command: str, argv: list[str], *extra: str) -> str:
    """`qat-sweep COMMAND` with a command's own arguments (sweep=, launcher=, paths.runs=, every
    override) and ``extra``, flags left out: a hint the user can paste as printed."""
    kept = [a for a in argv if not a.startswith("-")]
    return " ".join(["qat-sweep", command, *map(shlex.quote, [*kept, *extra])])


def parse_int(value: Any, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` from a command-line word (for `parse_keys` specs)."""
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError("not an integer") from None
    if number < minimum:
        raise ValueError(f"must be >= {minimum}")
    return number


def parse_bool(value: Any) -> bool:
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise InputError(f"expected true or false, got {value!r}")


# The allowed words of the run config's keys, each named once; config.schema types the keys
# with them. Which GPU a process uses is its local rank's (or CUDA_VISIBLE_DEVICES'), never an
# index here.
DEVICES = ("auto", "cpu", "cuda")  # train.device
# train.compile and train.autocast_bf16: auto = on CUDA, off on CPU; any case (YAML true is a bool)
SWITCHES = ("auto", "true", "false")
# train.parallelism: how one run's processes share the model; auto picks one of the others
# (single for one process, else DDP, or FSDP where plan's sizing finds DDP does not fit).
PARALLELISMS = ("auto", "single", "ddp", "fsdp")
SCHEDULES = ("cosine", "wsd")  # optim.schedule
WANDB_MODES = ("auto", "online", "offline", "disabled")  # logger.wandb.mode, a profile's wandb_mode


def switch(value: Any, key: str) -> str:
    """'auto', 'true' or 'false' for a `SWITCHES` value in any case (YAML gives true as a bool);
    InputError naming the value and the allowed words for anything else."""
    word = str(value).lower()
    if word not in SWITCHES:
        raise InputError(f"{key}={value!r}: allowed: {', '.join(SWITCHES)}")
    return word


def resolve_device(value: Any, key: str = "device") -> str:
    """'cpu' or 'cuda' for a `DEVICES` word (auto: CUDA when there is one); InputError for any
    other word, and for cuda on a machine without a CUDA device."""
    if value not in DEVICES:
        raise InputError(f"{key}={value!r}: allowed: {', '.join(DEVICES)}")
    import torch  # here, not at the top: plan and the analysis import this module without torch

    cuda = torch.cuda.is_available()
    if value == "cuda" and not cuda:
        raise InputError(f"{key}=cuda but no CUDA device is available")
    return "cuda" if value == "cuda" or (value == "auto" and cuda) else "cpu"


def split_overrides(
    argv: list[str], allowed: set[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> tuple[dict[str, str], list[str]]:
    """``key=value`` words apart from the rest (--flags and their values).

    A word right after one of ``parser``'s flags that takes a value stays that flag's own
    (``--holdout 'loss >= 3'``). With ``allowed``, any other key is a InputError.
    """
    takes_value = {
        option
        for action in (parser._actions if parser else [])
        if action.nargs != 0
        for option in action.option_strings
    }
    overrides: dict[str, str] = {}
    rest: list[str] = []
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-") or (i and argv[i - 1] in takes_value):
            rest.append(arg)
            continue
        if allowed is not None and key not in allowed:
            raise InputError(
                f"unknown key {key!r} in {arg!r}; allowed: {', '.join(sorted(allowed))}"
            )
        overrides[key] = value
    return overrides, rest


def parse_keys(
    args: list[str], spec: Mapping[str, Callable[[str], Any]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Only ``key=value`` words, each converted by ``spec[key]``; unknown or missing keys named."""
    words = [a for a in args if "=" not in a or a.startswith("-")]
    if words:
        raise InputError(f"expected key=value, got {words[0]!r}")
    raw, _ = split_overrides(args, set(spec))
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            parsed[key] = spec[key](value)
        except ValueError as err:
            raise InputError(f"{key}={value!r}: {err}") from err
    missing = [k for k in required if k not in parsed]
    if missing:
        raise InputError(f"missing required key(s): {', '.join(missing)}")
    return parsed


# --- typed configs ---


@functools.cache
def _schema(cls: type) -> Any:
    """OmegaConf's structured config of dataclass ``cls``, built once (building it is the cost)."""
    from omegaconf import OmegaConf  # here: plan's workers and the analysis import common bare

    return OmegaConf.structured(cls)


def structured_fields(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``data`` checked key by key by OmegaConf's structured schema of dataclass ``cls``: the
    typed values, and each unknown, missing or mistyped key named with its value and type.

    An int field takes an int or a decimal string and refuses bools and floats, 3.0 too (a point
    there is a slip; nothing is truncated); a float field takes ints; a str field takes any
    scalar's str(); null only where Optional. Strings are kept as given, never interpolated.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config = _schema(cls).copy()
    OmegaConf.set_readonly(config, False)  # a frozen dataclass gives a read-only schema
    types = {f.name: f.type for f in dataclasses.fields(cls)}  # the annotations, as written
    unknown, mistyped = [], {}
    for key, value in data.items():
        try:
            config[key] = value
        except OmegaConfBaseException:  # ConfigKeyError: unknown key; ValidationError: type
            if key in types:
                mistyped[key] = value
            else:
                unknown.append(key)
    problems = [f"{key} must be {types[key]}, got {value!r}" for key, value in mistyped.items()]
    if unknown:
        problems.insert(0, f"unknown key(s) {unknown}; allowed: {', '.join(types)}")
    missing = [k for k in types if k not in mistyped and OmegaConf.is_missing(config, k)]
    if missing:
        problems.append(f"missing key(s) {missing}")
    return OmegaConf.to_container(config, resolve=False), problems  # type: ignore[return-value]
