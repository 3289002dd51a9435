"""Hydra search-path plugin: the user's conf/ (working directory or --config-dir) goes first.

Hydra can only append ``hydra.searchpath`` entries after the primary config directory, so a
user's file could not shadow a packaged one of the same name; a SearchPathPlugin may prepend.
Hydra finds it by scanning the ``hydra_plugins`` namespace package.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class QatSweepUserConf(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from qat_sweep.config_dirs import user_dirs

        for directory in user_dirs("conf"):
            search_path.prepend(provider="qat-sweep user conf", path=f"file://{directory}")
