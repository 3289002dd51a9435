"""report.

matplotlib keeps its config and font cache in MPLCONFIGDIR; unless the user set it, that is
qat-sweep's cache directory (common.user_cache_dir), set here before any figure module
imports matplotlib, so a report never drops a cache unasked in $HOME.
"""

import os

from qat_sweep.common import user_cache_dir

os.environ.setdefault("MPLCONFIGDIR", str(user_cache_dir() / "matplotlib"))
