# Every target creates .venv and installs segflow into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint format dashboard system-deps lock clean

# uv installs the lock file's versions in seconds where pip takes minutes.
UV_VERSION := 0.13.9
UV := $(BIN)/uv

# Installs exactly the versions in requirements.lock (what the tests passed with).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(UV) pip install -q --python $(BIN)/python -c requirements.lock -e '.[dev]'
	touch $(STAMP)

## demo: generate the demo store and run the pipeline on the SQLite default (segflow.db)
demo: $(STAMP)
	test -f segflow.toml || $(BIN)/segflow init
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

## dashboard: a marimo dashboard on the default database (DASHBOARD=segment_lab, campaigns, overview)
DASHBOARD ?= dashboard
dashboard: $(STAMP)
	$(BIN)/segflow dashboard $(DASHBOARD)

## system-deps: Debian packages the tests need (PostgreSQL server binaries)
system-deps:
	@sh scripts/system-deps.sh

## lock: resolve pyproject.toml's dependencies into requirements.lock, keeping
## pins that still fit (make lock ARGS=--upgrade takes the newest of everything)
lock: $(STAMP)
	$(UV) pip compile -q pyproject.toml --extra dev --python $(BIN)/python $(ARGS) \
		--custom-compile-command 'make lock' -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
