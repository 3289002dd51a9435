"""The shared helpers: one count grammar, atomic writes, key=value words."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from qat_sweep.common import (
    InputError,
    atomic_open,
    format_count,
    format_duration,
    format_hours,
    format_loss,
    format_number,
    json_safe,
    parse_count,
    parse_int,
    parse_keys,
    parse_tokens,
    progress,
    resolve_device,
    split_overrides,
    stale_temps,
    structured_fields,
    write_json_atomic,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("20B", 20 * 10**9), ("20b", 20 * 10**9), ("2e6", 2 * 10**6), ("1.1M", 1_100_000),
     ("20_000", 20_000), (" 500K ", 500_000), ("1G", 10**9), (2e6, 2 * 10**6), (7, 7)],
)  # fmt: skip
def test_train_plan_and_predict_share_one_grammar(text: object, tokens: int) -> None:
    assert parse_tokens(text) == tokens and parse_count(text) == float(tokens)


@pytest.mark.parametrize(
    ("text", "message"),
    [("-5", "tokens=-5: not a count"), (".", "tokens=.: not a count"), (True, "not a count"),
     ("inf", "not a count"), ("0", "tokens=0: must be a finite number > 0"),
     ("0.5", "tokens=0.5: must be a whole number")],
)  # fmt: skip
def test_bad_counts_name_key_and_value(text: object, message: str) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        parse_tokens(text)
    assert parse_count("1.5T", "n") == 1.5e12
    with pytest.raises(InputError, match="hidden_size=x: not a count"):
        parse_count("x", "hidden_size")


def test_format_count_round_trips_run_key_labels() -> None:
    for n in (74_000_000, 2_500_000, 10**10, 123):
        assert parse_tokens(format_count(n)) == n
    assert format_count(10**10) == "10B" and format_count(2_500_000) == "2.5M"


def test_format_number_never_prints_a_long_run_of_digits() -> None:
    assert format_number(1.0142e304 / 1e6, digits=3) == "1.01e+298"
    assert format_number(4.184072375297546, 4) == "4.1841" and format_number(3e7, 4) == "3e+07"
    assert format_number(None) == format_number(float("nan")) == "n/a"


def _bar_text(monkeypatch: pytest.MonkeyPatch, quiet: bool) -> str:
    """What progress() writes to a terminal of 100 columns while 3 items pass."""
    import fcntl
    import struct
    import sys
    import termios

    from qat_sweep import common

    monkeypatch.setattr(common, "_progress_on", True)
    if quiet:
        common.quiet_progress()
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    os.set_blocking(leader, False)
    with os.fdopen(follower, "w") as tty, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", tty)
        assert list(progress(range(3), "simulated fits", unit="sweep")) == [0, 1, 2]
        tty.flush()
        try:  # read while the terminal is open (a closed one reads as an I/O error)
            return os.read(leader, 4096).decode()
        except BlockingIOError:
            return ""
        finally:
            os.close(leader)


def test_progress_bars_only_on_a_terminal_and_not_when_quiet(monkeypatch, capsys) -> None:
    assert "simulated fits: " in _bar_text(monkeypatch, quiet=False)
    assert _bar_text(monkeypatch, quiet=True) == ""
    monkeypatch.setattr("qat_sweep.common._progress_on", True)
    assert list(progress(range(3), "simulated fits")) == [0, 1, 2]  # stderr captured: no tty
    assert capsys.readouterr().err == ""


def test_numbers_print_short_for_people() -> None:
    assert format_count(250_000) == "250K" and format_count(20e9) == "20B"
    assert format_count(74_323_456, 3) == "74.3M" and format_count(36_864.0, 3) == "36.9K"
    assert format_count(4.184072375297546) == "4.184" and format_count(0) == "0"
    assert format_loss(4.184072375297546) == "4.1841" and format_loss(None) == "-"
    assert format_loss(float("nan")) == "-"
    assert [format_hours(h) for h in (119_387.2, 25.4, 0.00061)] == ["119,387", "25", "0.00061"]
    assert [format_duration(s) for s in (45, 725, 11_220, 187_200)] == [
        "45s",
        "12m05s",
        "3h07m",
        "2d04h",
    ]
    assert format_duration(None) == "-" and format_duration(float("inf")) == "-"
    assert format_loss(1e20) == "1e+20"  # never a long run of digits


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "result.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("{half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"a": 1}
    assert not stale_temps(path) and [p.name for p in path.parent.iterdir()] == ["result.json"]
    with pytest.raises(ValueError):  # NaN is refused, json_safe turns it into null first
        write_json_atomic(path, {"a": float("nan")})
    write_json_atomic(path, json_safe({"a": np.float32(np.nan), "b": np.arange(2), "c": (1.5,)}))
    assert json.loads(path.read_text()) == {"a": None, "b": [0, 1], "c": [1.5]}


def test_split_overrides_keeps_flag_values_and_names_unknown_keys() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--holdout")
    parser.add_argument("--json", action="store_true")
    argv = ["sweep=paper", "--holdout", "model == '973M'", "--json", "a=b=c"]
    assert split_overrides(argv, None, parser) == (
        {"sweep": "paper", "a": "b=c"},
        ["--holdout", "model == '973M'", "--json"],
    )
    with pytest.raises(InputError, match=r"unknown key 'bogus' in 'bogus=1'; allowed: sweep"):
        split_overrides(["bogus=1"], {"sweep"})
    assert parse_keys(["n=3"], {"n": int}) == {"n": 3}
    for argv, message in ((["x"], "expected key=value"), (["n=a"], "n='a': "),
                          ([], "missing required key")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            parse_keys(argv, {"n": int}, ("n",))


def test_int_words_and_the_one_device_grammar() -> None:
    """bench and train share one device word set; an index is the rank's (local rank), not ours."""
    assert parse_int("3") == 3 and parse_int("0", minimum=0) == 0
    for word, message in (("3.5", "not an integer"), ("0", "must be >= 1"), ("", "not an integer")):
        with pytest.raises(ValueError, match=message):
            parse_int(word)
    cuda = torch.cuda.is_available()
    assert resolve_device("auto") == ("cuda" if cuda else "cpu") and resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match=r"train.device='cuda:0': allowed: auto, cpu, cuda"):
        resolve_device("cuda:0", "train.device")
    if not cuda:
        with pytest.raises(InputError, match="device=cuda but no CUDA device is available"):
            resolve_device("cuda")


@dataclass(frozen=True)
class _Shape:
    name: str
    layers: int
    scale: float | None = None
    tags: list[str] = field(default_factory=list)


def test_structured_fields_types_each_key_and_names_every_problem() -> None:
    values, problems = structured_fields(_Shape, {"name": "a", "layers": "3", "scale": 2})
    assert problems == [] and values == {"name": "a", "layers": 3, "scale": 2.0, "tags": []}
    assert _Shape(**values) == _Shape("a", 3, 2.0)
    _, problems = structured_fields(
        _Shape, {"layers": True, "scale": "big", "tags": "x", "depth": 1, "note": "${HOME}"}
    )
    assert problems == [
        "unknown key(s) ['depth', 'note']; allowed: name, layers, scale, tags",
        "layers must be int, got True",
        "scale must be float | None, got 'big'",
        "tags must be list[str], got 'x'",
        "missing key(s) ['name']",
    ]
    for slip in (3.0, 3.5):  # a point in a count is a slip: nothing is truncated
        assert structured_fields(_Shape, {"name": "a", "layers": slip})[1] == [
            f"layers must be int, got {slip}"
        ]
    values, _ = structured_fields(_Shape, {"name": "${HOME}", "layers": 1})
    assert values["name"] == "${HOME}"  # kept as written, never interpolated
