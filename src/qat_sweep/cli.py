"""The `qat-sweep` console script: one subcommand per job, Hydra-style `key=value` arguments."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from qat_sweep.config_dirs import CONFIG_DIR_ENV

USAGE = """usage: qat-sweep <command> [key=value ...]

commands:
  train     one training run (a Hydra app: key=value overrides, -m for multirun)
  plan      expand and validate a sweep: plan sweep=NAME [--json]
  launch    submit a sweep's missing runs: launch sweep=NAME launcher=PROFILE [--dry-run]
            [--retry-diverged]
  status    completed / running / failed / missing runs: status sweep=NAME [--json]
  fit       fit the scaling law: fit (sweep=NAME | --runs DIR | --table FILE.csv) --out DIR
  predict   a fitted law's prediction: predict --fit DIR model=... tokens=... scheme=...
  design    expected intervals of a grid before running it: design sweep=NAME [--target ...]
  suggest   the next runs worth their GPU-hours: suggest --fit DIR sweep=NAME --target ...
  decide    decisions from a fitted law: decide --fit DIR model=... tokens=... scheme=...
  prepare   tokenize a corpus: prepare input=PATH out=DIR | prepare demo | prepare hf ...
  bench     the trainer's step time per scheme vs BF16: bench model=1M batch=8 compile=both
  demo      the embedded end-to-end loop: demo sweep, fit and report on this machine
  sync      upload a sweep's offline wandb runs, then write delta and fit summaries:
            sync sweep=NAME [--dry-run]
  wandb-workspace  save a wandb workspace of a sweep and print its URL:
            wandb-workspace sweep=NAME --entity E --project P

configs: the packaged conf/ and launchers/, overlaid by ./conf and ./launchers (or those of
--config-dir=DIR); a file of yours with the same name wins.
"""


def _train(argv: list[str]) -> int:
    from qat_sweep.train import trainer as train

    # A single run is checked as `plan` checks it, before Hydra composes it; Hydra's own flags
    # (-m, --cfg, hydra.* / hydra/launcher=...) go straight to Hydra.
    if not any(arg.startswith(("-", "hydra")) for arg in argv):
        from qat_sweep.config.checks import override_problems

        problems = override_problems(argv, has_cuda=train.torch.cuda.is_available())
        if problems:
            print("error: " + "\n  ".join(["this run cannot start:", *problems]), file=sys.stderr)
            return 2
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # the check composed with Hydra; hydra.main starts afresh
    # Hydra parses sys.argv itself, so -m, --cfg job, hydra/launcher=... all work as usual.
    sys.argv = ["qat-sweep train", *argv]
    train.main()
    return 0


def _lazy(module: str, function: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return run


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": _train,
    "plan": _lazy("qat_sweep.sweep.plan", "plan_main"),
    "launch": _lazy("qat_sweep.sweep.launch", "launch_main"),
    "status": _lazy("qat_sweep.sweep.launch", "status_main"),
    "fit": _lazy("qat_sweep.analysis.cli", "fit_main"),
    "predict": _lazy("qat_sweep.analysis.cli", "predict_main"),
    "design": _lazy("qat_sweep.analysis.design.expected", "main"),
    "suggest": _lazy("qat_sweep.analysis.design.suggest", "main"),
    "decide": _lazy("qat_sweep.analysis.decide", "main"),
    "prepare": _lazy("qat_sweep.data.prepare.tokenize", "main"),
    "bench": _lazy("qat_sweep.train.bench", "main"),
    "demo": _lazy("qat_sweep.commands.demo", "main"),
    "sync": _lazy("qat_sweep.sweep.sync", "sync_main"),
    "wandb-workspace": _lazy("qat_sweep.sweep.workspace", "workspace_main"),
}


def _take_config_dir(argv: list[str]) -> list[str] | None:
    """Strip ``--config-dir=DIR`` (its conf/ and launchers/ overlay the packaged ones) into
    QAT_SWEEP_CONFIG_DIR, which local and SLURM runs inherit. None: DIR is not a directory."""
    rest = []
    for arg in argv:
        if arg.startswith("--config-dir="):
            root = Path(arg.split("=", 1)[1]).expanduser().resolve()
            if not root.is_dir():
                return None
            os.environ[CONFIG_DIR_ENV] = str(root)
        else:
            rest.append(arg)
    return rest


def main(argv: list[str] | None = None) -> int:
    given = _take_config_dir(sys.argv[1:] if argv is None else argv)
    if given is None:
        print(
            "qat-sweep: --config-dir=DIR needs a directory (with conf/, launchers/)",
            file=sys.stderr,
        )
        return 2
    argv = given
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"qat-sweep: unknown command {command!r}; allowed: {', '.join(COMMANDS)}\n",
            file=sys.stderr,
        )
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        # A bad input a subcommand did not word itself; QAT_SWEEP_DEBUG=1 shows the traceback.
        if os.environ.get("QAT_SWEEP_DEBUG") == "1":
            raise
        print(f"qat-sweep {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
