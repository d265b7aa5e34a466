# Quick start:  make demo   (runs the pipeline on a built-in synthetic cohort)
#               make test   (runs the whole test suite)
# Each target creates ./.venv and installs the engine into it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format benchmark clean-venv

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rada demo --out rada-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q Testing/Python

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: $(STAMP)
	$(BIN)/python Testing/Benchmarks/benchmark_propagation.py

clean-venv:
	rm -rf $(VENV)
