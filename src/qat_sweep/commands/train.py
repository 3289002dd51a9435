"""`qat-sweep train key=value ...`: one training run, a Hydra app (`-m` for multirun); a single run
is checked as `plan` checks it before Hydra composes it."""

from __future__ import annotations

import sys

from qat_sweep.train import trainer as train


def main(argv: list[str]) -> int:
    """Check the run as `plan` would, then hand argv to the trainer's Hydra app."""
    # A single run is checked as `plan` checks it, before Hydra composes it; Hydra's own flags
    # (-m, --cfg, hydra.* / hydra/launcher=...) go straight to Hydra.
    if not any(arg.startswith(("-", "hydra")) for arg in argv):
        from qat_sweep.config.checks import override_problems

        problems = override_problems(argv, has_cuda=train.torch.cuda.is_available())
        if problems:
            print("error: " + "\n  ".join(["this run cannot start:", *problems]), file=sys.stderr)
            return 2
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # a check (or a caller) composed with Hydra; hydra.main starts afresh
    # Hydra parses sys.argv itself, so -m, --cfg job, hydra/launcher=... all work as usual.
    sys.argv = ["qat-sweep train", *argv]
    train.main()
    return 0
