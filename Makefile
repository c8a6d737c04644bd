# The two commands of the README. Each builds .venv on first use (about 2 minutes:
# torch is large), then reuses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

## demo: run the tutorial end to end on scikit-learn's digits, on ./store
demo: $(BIN)/.installed
	$(BIN)/python -m weightslab.demo

## test: lint, then the whole test suite (SQLite and PostgreSQL)
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .

## bench: the benchmark suite (the current table: docs/benchmarks.md)
bench: $(BIN)/.installed
	$(BIN)/python tools/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
