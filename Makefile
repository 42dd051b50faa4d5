# Two commands on a fresh machine: `make up` (serve the demo model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS ?= models
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install up demo-model test lint clean mutation deliberate-bugs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Trains the demo model on the built-in offline dataset and exports it (skipped if present).
demo-model: $(STAMP)
	@test -f $(MODELS)/demo/1/saved_model.pb || $(BIN)/resnet-serving demo --model-base $(MODELS)

# The service on the embedded backend with the demo model, ready for POSTs on :8000.
up: demo-model
	$(BIN)/resnet-serving serve --backend embedded --model-base $(MODELS) --model-name demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Not part of `make test` (CPU-heavy, ~30-60 min on 2 cores): do the tests of the modules that
# guard requests notice small bugs? Scores and survivors: docs/testing.md.
MUTMUT_VERSION := 3.8.1
mutation: $(STAMP)
	$(BIN)/python -m pip install -q 'mutmut==$(MUTMUT_VERSION)'
	$(BIN)/python -m benchmarks.mutation $(MUTATION_ARGS)

# Issue 18's ten deliberate bugs put back one at a time: each must fail at least one test.
deliberate-bugs: $(STAMP)
	$(BIN)/python -m benchmarks.deliberate_bugs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
