# Self-setting-up entry points: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/quickstart.yaml
OUT ?= out/quickstart

.PHONY: setup run test check lint format typecheck contracts smoke bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/sluiceway run $(CONFIG) --output $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/ruff check src tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

check: lint typecheck contracts test

smoke: $(STAMP)
	$(BIN)/python benchmarks/scale_smoke.py --records 100000

# Every benchmark scenario at tiny sizes, one iteration each (under a minute; CI runs it).
bench-smoke: $(STAMP)
	$(BIN)/sluiceway bench all --smoke -o out/bench-smoke

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
