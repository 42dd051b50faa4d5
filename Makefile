# Two commands on a fresh machine: `make up` (serve the demo model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS ?= models
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install up demo-model test lint clean

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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
