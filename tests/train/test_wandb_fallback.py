"""wandb never stalls a run nor vanishes from it: without a reachable server, with an unusable
WANDB_MODE or without a key a run logs offline (real wandb, no network), for `sync` to upload
later, and wandb's cache stays out of $HOME."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qat_sweep import wandb_api
from qat_sweep.sweep.sync import offline_files
from qat_sweep.train.tracking import Tracker, resolve_wandb_mode

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listening() -> Iterator[int]:
    """A local HTTP server that answers 404 to everything: a server that is there."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def with_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_auto_with_a_key_and_no_server_falls_back_offline_in_seconds(
    with_key, closed_port: int, listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    with pytest.warns(UserWarning, match=f"cannot reach http://127.0.0.1:{closed_port} "):
        assert resolve_wandb_mode("auto") == "offline"
    with pytest.warns(UserWarning, match="logging wandb offline"):
        assert resolve_wandb_mode("online") == "offline"  # asked for, but nobody answers
    assert time.monotonic() - start < 2 * wandb_api.REACH_TIMEOUT_S
    # a name that does not resolve, as on a compute node without DNS
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.invalid")
    with pytest.warns(UserWarning, match="cannot reach https://wandb.invalid "):
        assert resolve_wandb_mode("auto") == "offline"
    # a server that takes the connection and never answers is cut off by the timeout
    monkeypatch.setattr(wandb_api, "REACH_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.warns(UserWarning, match="did not answer within 0.5 s|timed out"):
            assert resolve_wandb_mode("auto") == "offline"
        assert time.monotonic() - start < 1.5
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listening}")
    assert wandb_api.server_unreachable() is None
    assert resolve_wandb_mode("auto") == "online"


@pytest.mark.parametrize("value", ["", "sometimes"])
def test_an_unusable_wandb_mode_logs_offline(
    value: str, with_key, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", value)
    with pytest.warns(UserWarning, match=f"WANDB_MODE={value!r} is none of online, offline"):
        assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"


@pytest.mark.slow
def test_a_run_without_a_server_logs_offline_for_sync_and_keeps_home_clean(
    with_key, closed_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("WANDB_MODE", "")  # what a job script's `export WANDB_MODE=$MODE` leaves
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # unset for the run (restored after)
        monkeypatch.setenv(var, "")
    (tmp_path / "home").mkdir()
    run_dir = tmp_path / "sweep" / "run"
    with pytest.warns(UserWarning, match="logging wandb offline"):
        tracker = Tracker(run_dir, enabled=True, wandb_settings={"mode": "auto"}, wandb_init={})
    assert tracker.wandb_info is not None and tracker.wandb_info["mode"] == "offline"
    tracker.log({"step": 1, "loss": 5.0, "tokens": 128})
    tracker.finish({"loss": 5.0})
    assert len(offline_files(run_dir.parent)) == 1  # what `qat-sweep sync` uploads
    assert list((tmp_path / "home").iterdir()) == []
    # where the service's debug log goes is not asserted: wandb keeps one service per process,
    # so after another test's run it logs under that run's cache (a trainer is its own process)
