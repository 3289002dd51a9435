"""The trainer: one run from a composed config to its record (`python -m qat_sweep.train`)."""
