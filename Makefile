# Every target creates .venv and installs segflow into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint format dashboard system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
