# streamlearner — the two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE
export OPENBLAS_NUM_THREADS := 1

.PHONY: install test test-unit test-integration demo clean bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[embedded,tracking,dev]'
	touch $@

install: $(BIN)/.installed

## Everything CI runs: unit + integration (real broker, real encoder), not the `slow` ones.
test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

## Embedded broker + worker + bundled sample stream, ends with a summary.
demo: install
	$(BIN)/streamlearner demo

## Performance benchmarks (issue #6): ingest, learner, freshness, serving -> bench/results/perf/.
## One at a time, about 15 minutes on 2 cores; `bash bench/gpu.sh` is the CUDA one.
bench: install
	$(BIN)/python -m bench.perf.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
