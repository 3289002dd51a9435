"""Every call qat-sweep makes to a wandb server, in one place.

Runs log through `wandb.init` (tracking.py); everything that talks to the server afterwards
(uploading offline runs, editing summaries, saving a workspace) goes through these few
functions, so the rest of the code is testable without a server and the server-facing surface
is easy to audit.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from qat_sweep.common import user_cache_dir

REACH_TIMEOUT_S = 3.0  # a server that gives no answer in this long is taken as unreachable


def server_unreachable(timeout_s: float | None = None) -> str | None:
    """Why the wandb server gives no HTTP answer within ``timeout_s`` (REACH_TIMEOUT_S unless
    given; through HTTPS_PROXY when set, name lookup included); None when it answers, whatever
    the status. A compute node without network otherwise stalls in wandb.init for minutes."""
    timeout_s = REACH_TIMEOUT_S if timeout_s is None else timeout_s
    url = base_url()
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer: the server is there
            outcome.append(None)
        except (OSError, ValueError) as e:  # URLError, timeouts, a malformed URL
            outcome.append(str(getattr(e, "reason", e)) or type(e).__name__)

    thread = threading.Thread(target=ask, daemon=True)  # name lookup has no timeout of its own
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"{url} did not answer within {timeout_s:g} s"
    return None if outcome[0] is None else f"cannot reach {url} ({outcome[0]})"


def base_url() -> str:
    """The server wandb talks to: WANDB_BASE_URL, else `wandb login --host`'s settings file,
    else wandb's default."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb"
    settings = configparser.ConfigParser()
    settings.read(Path(config_dir) / "settings")
    if settings.has_option("default", "base_url"):
        return settings.get("default", "base_url")
    import wandb

    return str(wandb.Settings().base_url)


def cache_env(cache_dir: Path) -> dict[str, str]:
    """wandb's cache and staging directories (its service's debug logs go to the cache) under
    ``cache_dir``, where the user has not chosen them, so nothing lands unasked in $HOME."""
    wanted = {"WANDB_CACHE_DIR": cache_dir / "cache", "WANDB_DATA_DIR": cache_dir / "data"}
    return {var: str(path) for var, path in wanted.items() if not os.environ.get(var)}


def has_api_key() -> bool:
    """Whether wandb has credentials (env, netrc or `wandb login`) for the configured host."""
    import wandb

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.Api(timeout=10).api_key)
    except Exception:  # no key: wandb.Api raises or returns none depending on the version
        return False


def sync_offline(
    files: list[Path], entity: str | None, project: str | None, dry_run: bool = False
) -> int:
    """Upload offline `.wandb` files with `wandb sync` (its own progress display).

    wandb marks each uploaded file with a `.wandb.synced` file and skips marked files, so a
    second call uploads nothing; fragments of one resumed run are replayed in time order.
    """
    command = [sys.executable, "-m", "wandb", "sync", "--yes"]
    command += ["--dry-run"] if dry_run else []
    command += ["--entity", entity] if entity else []
    command += ["--project", project] if project else []
    env = {**os.environ, **cache_env(user_cache_dir() / "wandb")}
    return subprocess.run([*command, *map(str, files)], check=False, env=env).returncode


def default_entity() -> str | None:
    """The entity runs go to when none is configured (the API key's default)."""
    import wandb

    return wandb.Api(timeout=30).default_entity


def update_summary(path: str, values: dict[str, Any]) -> None:
    """Merge `values` into the summary of run `entity/project/id` on the server."""
    import wandb

    wandb.Api(timeout=30).run(path).summary.update(values)


def save_workspace(workspace: Any) -> str:
    """Save a `wandb_workspaces` workspace as a new view; returns its URL."""
    workspace.save()
    return str(workspace.url)
