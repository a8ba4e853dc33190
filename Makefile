# Two commands on a fresh machine: `make run` (set up + serve) and `make test` (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup models run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	# llama-cpp-python compiles llama.cpp on first install (about 9 min on 2 cores);
	# pip caches the built wheel, so later set-ups take seconds.
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

models: setup
	$(BIN)/appliance models fetch-defaults

run: models
	$(BIN)/appliance serve

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

bench: models
	$(BIN)/python bench/llm_api.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
