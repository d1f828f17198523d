# The README's two commands are `make demo` and `make test`; both set up .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU machines take the torch 2.13.0 CPU wheel; a GPU user sets TORCH_SPEC to their CUDA build (or leaves torch as is).
TORCH_SPEC ?= torch==2.13.0
# Every other package at the version last tested (constraints.txt); `CONSTRAINTS=` resolves the ranges afresh.
CONSTRAINTS ?= constraints.txt
export DS_ACCELERATOR ?= cpu
export RAY_DEDUP_LOGS ?= 0
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: setup lock demo test test-slow bench bench-quick lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# One resolve with torch pinned: installed alone first, a later resolve may swap it for another build.
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) "$(TORCH_SPEC)" -e ".[text,s3,dev]"
	touch $(STAMP)

lock: setup          ## rewrite constraints.txt from .venv (after changing the dependencies in pyproject.toml)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.new
	mv constraints.new constraints.txt

demo: setup          ## synthetic data -> shards -> 2-worker ZeRO-2 training -> eval
	$(BIN)/mktn demo --output runs/demo

test: setup          ## the default suite (CI runs this); the 15 slowest tests are listed at the end
	$(BIN)/python -m pytest -q --durations=15

test-slow: setup     ## multi-node, object-store, fault and soak suites
	$(BIN)/python -m pytest -q --durations=15 -m slow

bench: setup         ## every benchmark, full size (8-17 min on 2 cores)
	$(BIN)/python -m bench.run_all

bench-quick: setup
	$(BIN)/python -m bench.run_all --quick

lint: setup          ## lint and format check (CI runs it too)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs out bench/results
