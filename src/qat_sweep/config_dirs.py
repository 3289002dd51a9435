"""Where configs come from: the packaged ``conf/`` and ``launchers/``, overlaid by the user's.

The package ships its configs (package data of the wheel; the source tree's ``conf/`` and
``launchers/`` in an editable install). A ``conf/`` and a ``launchers/`` in the working
directory, or in the directory given by ``--config-dir`` (``QAT_SWEEP_CONFIG_DIR``), add to
them: a user's file of the same name wins, every other file stays visible. Hydra gets the same
order from the search-path plugin in ``hydra_plugins/qat_sweep_conf`` (user first), so
`qat-sweep train`, `plan` and `launch` agree on each file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CONFIG_DIR_ENV = "QAT_SWEEP_CONFIG_DIR"
# Replace the packaged directories (kept for setups that point at a copy of them).
_PACKAGED_ENV = {"conf": "QAT_SWEEP_CONF", "launchers": "QAT_SWEEP_LAUNCHERS"}
_PACKAGE = Path(__file__).resolve().parent


def packaged_dir(kind: str) -> Path:
    """The shipped ``conf`` or ``launchers`` directory (wheel: package data; else the source tree)."""
    if os.environ.get(_PACKAGED_ENV[kind]):
        return Path(os.environ[_PACKAGED_ENV[kind]]).resolve()
    installed = _PACKAGE / kind
    return installed if installed.is_dir() else _PACKAGE.parents[1] / kind


def user_root() -> Path:
    """The directory whose ``conf/`` and ``launchers/`` overlay the packaged ones."""
    return Path(os.environ.get(CONFIG_DIR_ENV) or Path.cwd()).resolve()


def user_dirs(kind: str) -> list[Path]:
    """The user's ``kind`` directory, if there is one (the source tree's own is not a user's)."""
    user = user_root() / kind
    if user.is_dir() and user.resolve() != packaged_dir(kind).resolve():
        return [user]
    return []


def search_dirs(kind: str) -> list[Path]:
    """``kind`` directories in lookup order: the user's (if it exists), then the packaged one."""
    return [*user_dirs(kind), packaged_dir(kind)]


def find(dirs: list[Path], relative: str) -> Path | None:
    """The file that wins for ``relative`` (e.g. ``sweep/paper.yaml``) in ``dirs``, or None."""
    for root in dirs:
        if (root / relative).is_file():
            return root / relative
    return None


def options(dirs: list[Path], group: str = "") -> dict[str, Path]:
    """Name -> winning file of every ``*.yaml`` of ``group`` in ``dirs`` (the first one wins)."""
    found: dict[str, Path] = {}
    for root in reversed(dirs):
        found.update({p.stem: p for p in sorted((root / group).glob("*.yaml"))})
    return dict(sorted(found.items()))


def describe_dirs(dirs: list[Path], group: str = "") -> str:
    """The directories searched, for messages: ``./conf/sweep, <package>/conf/sweep``."""
    return ", ".join(str(root / group) for root in dirs)


def yaml_problem(path: Path, error: Exception) -> str:
    """A YAML syntax error as one sentence naming the file and line."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{where}: not valid YAML ({problem}); fix the file's syntax"


def load_yaml(path: Path, error: type[Exception]) -> Any:
    """A YAML file as plain data; ``error`` names the file and line of a syntax error."""
    import yaml  # here, not at the top: the console script imports this module at start
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as e:
        raise error(yaml_problem(path, e)) from e
    except (ValueError, HydraException, OmegaConfBaseException) as e:
        raise error(f"{path}: {str(e).splitlines()[0]}") from e
