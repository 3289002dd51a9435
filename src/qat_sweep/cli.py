"""The `qat-sweep` console script: one subcommand per job, Hydra-style `key=value` arguments."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from qat_sweep import __version__
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

`qat-sweep <command> --help` describes a command; `qat-sweep --version` prints the version.

configs: the packaged conf/ and launchers/, overlaid by ./conf and ./launchers (or those of
--config-dir=DIR); a file of yours with the same name wins.
"""


# Each command module is imported when its command runs: `plan` must not pay for torch, `fit`
# for Hydra. The functions are plain imports so that tools (and readers) can follow them.
def _train(argv: list[str]) -> int:
    from qat_sweep.commands import train

    return train.main(argv)


def _plan(argv: list[str]) -> int:
    from qat_sweep.commands import plan

    return plan.main(argv)


def _launch(argv: list[str]) -> int:
    from qat_sweep.commands import launch

    return launch.main(argv)


def _status(argv: list[str]) -> int:
    from qat_sweep.commands import status

    return status.main(argv)


def _fit(argv: list[str]) -> int:
    from qat_sweep.commands import fit

    return fit.main(argv)


def _predict(argv: list[str]) -> int:
    from qat_sweep.commands import predict

    return predict.main(argv)


def _design(argv: list[str]) -> int:
    from qat_sweep.commands import design

    return design.main(argv)


def _suggest(argv: list[str]) -> int:
    from qat_sweep.commands import suggest

    return suggest.main(argv)


def _decide(argv: list[str]) -> int:
    from qat_sweep.commands import decide

    return decide.main(argv)


def _prepare(argv: list[str]) -> int:
    from qat_sweep.commands import prepare

    return prepare.main(argv)


def _bench(argv: list[str]) -> int:
    from qat_sweep.commands import bench

    return bench.main(argv)


def _demo(argv: list[str]) -> int:
    from qat_sweep.commands import demo

    return demo.main(argv)


def _sync(argv: list[str]) -> int:
    from qat_sweep.commands import sync

    return sync.main(argv)


def _wandb_workspace(argv: list[str]) -> int:
    from qat_sweep.commands import wandb_workspace

    return wandb_workspace.main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": _train,
    "plan": _plan,
    "launch": _launch,
    "status": _status,
    "fit": _fit,
    "predict": _predict,
    "design": _design,
    "suggest": _suggest,
    "decide": _decide,
    "prepare": _prepare,
    "bench": _bench,
    "demo": _demo,
    "sync": _sync,
    "wandb-workspace": _wandb_workspace,
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
    if "--version" in argv:  # on every command too: `qat-sweep fit --version`
        print(f"qat-sweep {__version__}")
        return 0
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
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (a local launch stops its runs)
        print(f"\nqat-sweep {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        # argparse refuses (2) or answers --help (0) by exiting: returned, as every command's
        # code is, to in-process callers; the trainer's exits (preemption) stay exits
        if command == "train" or not isinstance(e.code, int | None):
            raise
        return e.code or 0
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        # A bad input a subcommand did not word itself; QAT_SWEEP_DEBUG=1 shows the traceback.
        if os.environ.get("QAT_SWEEP_DEBUG") == "1":
            raise
        print(f"qat-sweep {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
