# Two commands on a fresh machine: `make run` (set up + serve) and `make test` (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FLEET_STAMP := $(VENV)/.fleet-stamp
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# llama.cpp is compiled from the pinned llama-cpp-python sdist (sha256-checked), patched
# by tools/llama_source.py so that its CPU flash attention computes every row alike
# whatever the batch holds (the engine's greedy output then never depends on batching).
# The default build is portable: no -march=native (so no AVX-512 or AMX code), the
# x86-64-v3 set ggml enables when GGML_NATIVE is off (SSE4.2, AVX, AVX2, FMA, F16C, BMI2).
# It runs on any x86-64 CPU with AVX2, whichever host built it. `make LLAMA_VARIANT=native`
# builds for this CPU only (for benchmarks); `make LLAMA_VARIANT=cuda` adds the CUDA
# backend (needs nvcc). The wheel is kept per variant under .cache/wheels, never taken
# from pip's cache, which would not tell the builds apart.
LLAMA_VERSION := 0.3.36
LLAMA_VARIANT ?= portable
LLAMA_CMAKE_ARGS_portable := -DGGML_NATIVE=OFF
LLAMA_CMAKE_ARGS_native   := -DGGML_NATIVE=ON
LLAMA_CMAKE_ARGS_cuda     := -DGGML_NATIVE=OFF -DGGML_CUDA=ON
LLAMA_SRC     := .cache/llama-src-$(LLAMA_VARIANT)
LLAMA_WHEELS  := .cache/wheels/llama-$(LLAMA_VARIANT)-rowfa
LLAMA_WHEEL   := $(LLAMA_WHEELS)/.built

.PHONY: setup setup-fleet models run test test-busy lint bench clean llama-wheel

$(LLAMA_WHEEL): tools/llama_source.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	rm -rf $(LLAMA_SRC) $(LLAMA_WHEELS)
	mkdir -p $(LLAMA_SRC) $(LLAMA_WHEELS)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_SRC) \
	    llama-cpp-python==$(LLAMA_VERSION)
	$(BIN)/python tools/llama_source.py \
	    $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_VERSION).tar.gz $(LLAMA_SRC)
	# Compiles llama.cpp: about 9 min on 2 cores, once per variant.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS_$(LLAMA_VARIANT))" $(BIN)/python -m pip wheel \
	    --no-deps --no-cache-dir -w $(LLAMA_WHEELS) \
	    ./$(LLAMA_SRC)/llama_cpp_python-$(LLAMA_VERSION)
	rm -rf $(LLAMA_SRC)
	echo "$(LLAMA_VARIANT) $(LLAMA_CMAKE_ARGS_$(LLAMA_VARIANT))" > $@

llama-wheel: $(LLAMA_WHEEL)

$(STAMP): pyproject.toml Makefile $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install -e '.[dev]'
	# the OCR parity test's reference pipeline, without its opencv-python (see pyproject)
	$(BIN)/python -m pip install --no-deps rapidocr-onnxruntime==1.4.4
	echo "$(LLAMA_VARIANT)" > $(STAMP)

setup: $(STAMP)

# Only the test path installs the fleet extra (Ray Serve, pinned in pyproject), so the
# fleet tests run in CI instead of being skipped; `make run` and a single box stay
# without Ray. It adds about a minute (66 s measured for ray[serve]==2.60.0 with
# its dependencies into a fresh venv, no pip cache).
$(FLEET_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,fleet]'
	touch $(FLEET_STAMP)

setup-fleet: $(FLEET_STAMP)

models: setup
	$(BIN)/appliance models fetch-defaults

run: models
	$(BIN)/appliance serve

lint: setup
	$(BIN)/ruff check .

test: setup-fleet lint
	$(BIN)/python -m pytest -q

# The same suite while a busy loop runs on every core: waits are on events or generous.
test-busy: setup-fleet lint
	$(BIN)/python -m tests.cpu_hog -- $(BIN)/python -m pytest -q

bench: models
	$(BIN)/python bench/llm_api.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
