# Two commands for a fresh machine with python3 and make:
#   make demo   - creates .venv, installs flow-tracker, records the demo processes and shows them
#   make test   - creates .venv, installs the dev extras, runs ruff, mypy --strict and every
#                 test with line coverage (fails under the floor in pyproject.toml)
#   make test-fast - the tests without worker processes, kills and the browser (minutes)
#   make test-unit - the tests that need no database service and no worker (seconds)
#   make test-hostile - the hostile-input lane alone: odd values through library and dashboard
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast test-unit test-hostile lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[postgres,web]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'arq>=0.25,<0.29'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flow-tracker demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest --cov $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-unit: $(VENV)/.installed-dev
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-hostile: $(VENV)/.installed-dev
	$(BIN)/pytest -m hostile $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info flow_tracker_demo.db*
