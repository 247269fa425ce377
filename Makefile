# Every target creates .venv and installs segflow into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint format dashboard system-deps lock clean

PIP_VERSION := 26.3

# Installs exactly the versions in requirements.lock (what the tests passed with).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

## demo: generate the demo store and run the pipeline on the SQLite default (segflow.db)
demo: $(STAMP)
	$(BIN)/segflow demo --reset

## test: the whole suite, with the services it needs (PostgreSQL is started by the tests)
test: $(STAMP) system-deps
	$(BIN)/python -m pytest

## bench: benchmarks against their baselines; writes bench/README.md
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## dashboard: the overview dashboard (marimo app) on the default database
dashboard: $(STAMP)
	$(BIN)/segflow dashboard overview

## system-deps: Debian packages the tests need (PostgreSQL server binaries)
system-deps:
	@sh scripts/system-deps.sh

## lock: re-resolve the newest versions pyproject.toml allows into requirements.lock
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
