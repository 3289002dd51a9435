"""`python -m qat_sweep.train key=value ...`: the trainer as a Hydra app (`-m` for multirun)."""

from qat_sweep.train.trainer import main

if __name__ == "__main__":
    main()
