# Each target bootstraps .venv from the pinned lock (requirements.lock) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= default

.PHONY: run test test-fast serve ui bench lint lock clean-state

# pip byte-compiles on one core (about 95 s of a 140 s install here); compileall afterwards uses
# every core. A few files in the wheels are for newer Pythons and never compile (pip skips them too).
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.lock
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') > /dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## run: the whole pipeline on the embedded defaults (ingest, train, promote, build the Bento)
run: $(STAMP)
	$(BIN)/maas pipeline --config $(CONFIG)

## test: the whole test suite on CPU
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-fast: skip the tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

serve: $(STAMP)
	$(BIN)/maas serve

ui: $(STAMP)
	$(BIN)/maas ui

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/gpt_shakespeare.py
	$(BIN)/python benchmarks/serve_load.py --suite

lint: $(STAMP)
	$(BIN)/ruff check components flows tests benchmarks service.py compat.py

## lock: re-resolve requirements.lock (torch pinned to the CPU wheel here; GPU hosts resolve CUDA wheels)
lock: SHELL := /bin/bash
lock:
	uv pip compile pyproject.toml --extra dev --find-links /opt/wheels --override <(echo "torch==2.13.0+cpu") \
	  --python-version 3.11 -o requirements.lock && sed -i 's/^torch==2.13.0+cpu/torch==2.13.0/' requirements.lock

clean-state:
	rm -rf .maas
