"""Every call qat-sweep makes to a wandb server, in one place.

Runs log through `wandb.init` (tracking.py); everything that talks to the server afterwards
(uploading offline runs, editing summaries, saving a workspace) goes through these few
functions, so the rest of the code is testable without a server and the server-facing surface
is easy to audit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


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
    return subprocess.run([*command, *map(str, files)], check=False).returncode


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
