# qat-sweep: `make demo` runs the whole loop on this machine, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
# scripts/ without a .py suffix: ruff reads them when named
PY_SCRIPTS := $(shell grep -l '^\#!/usr/bin/env python' scripts/*)

.PHONY: venv demo test test-fast lint bench clean cluster-up cluster-down

$(BIN)/qat-sweep: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/qat-sweep

demo: venv
	$(BIN)/qat-sweep demo

# The whole suite, SLURM included: installs SLURM/munge/Chromium from Debian when missing
# (needs root) and starts a private loopback cluster inside the test session.
test: venv
	bash .ci/system-deps.sh
	QAT_SWEEP_REQUIRE_SLURM=1 $(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -q -m "not slow and not slurm and not browser" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check . $(PY_SCRIPTS)
	$(BIN)/ruff format --check . $(PY_SCRIPTS)
	scripts/lint-imports

bench: venv
	$(BIN)/qat-sweep bench model=1M batch=8 seq_len=128 steps=10

# A private single-node SLURM on loopback (the `ci` launch profile's cluster): needs SLURM and
# munge installed (bash .ci/system-deps.sh) and root. Then, in your shell:
#   export SLURM_CONF=$(CLUSTER)/slurm.conf PATH=$(CLUSTER)/bin:$$PATH
CLUSTER ?= /tmp/qat-sweep-slurm
cluster-up:
	$(PYTHON) tests/slurm_cluster.py start $(CLUSTER)

cluster-down:
	$(PYTHON) tests/slurm_cluster.py stop $(CLUSTER)

clean:
	rm -rf runs reports .pytest_cache
