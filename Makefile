# driftloop: `make repro` sets up .venv and runs the build plane; `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: help setup lock repro test test-fast lint fuzz bench bench-peers serve demo clean

help:  ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(BIN)/.installed  ## create .venv and install requirements.lock (exact pins, hashes) + driftloop[train,dev]

# requirements.lock pins every package of `.[train,dev]` with its sha256 hashes; uv installs it in a
# fraction of pip's time. torch==2.13.0+cpu is not on PyPI: it comes from a find-links folder
# (PIP_FIND_LINKS on these machines) or the PyTorch CPU index (FIND_LINKS=https://download.pytorch.org/whl/cpu).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_VERSION := 0.13.9
UV_FLAGS   := --python $(BIN)/python $(foreach f,$(FIND_LINKS),--find-links $(f))
# --compile-bytecode: uv, unlike pip, leaves .py files uncompiled, and where PYTHONDONTWRITEBYTECODE is set every
# process then recompiles torch, scikit-learn and Prefect from source (measured: the suite took 16 min instead of 8).
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'uv==$(UV_VERSION)'
	$(BIN)/uv pip sync -q $(UV_FLAGS) --compile-bytecode --require-hashes requirements.lock
	$(BIN)/uv pip install -q $(UV_FLAGS) --no-deps -e .
	touch $@

lock: setup  ## re-resolve requirements.lock after editing pyproject.toml (keeps the pins that still fit)
	$(BIN)/uv pip compile -q pyproject.toml --extra train --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 $(foreach f,$(FIND_LINKS),--find-links $(f)) -o requirements.lock
	$(BIN)/uv pip compile -q pyproject.toml --extra serve --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -c requirements.lock -o requirements-serve.lock

repro: setup  ## dvc repro: snapshot -> validate -> features -> train -> export -> optimize -> evaluate -> gate -> package
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup  ## the whole test suite on both cores (pytest-xdist; under 10 minutes on 2 cores)
	$(BIN)/python -m pytest -n 2 --dist loadscope

test-fast: setup  ## the tests that start no server and run no dvc repro
	$(BIN)/python -m pytest -n 2 --dist loadscope -m "not slow"

lint: setup  ## ruff
	$(BIN)/python -m ruff check driftloop tasks flows serving commands tests bench

fuzz: setup  ## schemathesis on a live server (artifacts/model, else a test package): all phases, every check, 300 examples per operation
	$(BIN)/python tests/serving/fuzz_contract.py --max-examples 300

bench: setup  ## every benchmark in bench/ (needs `make repro` first); results in bench/results/
	@for b in bench/build_pipeline.py bench/build_optimize.py bench/serve_http.py bench/serve_cpu.py bench/serve_batching.py bench/serve_tracing.py bench/serve_explain.py $(wildcard bench/flows_*.py) $(wildcard bench/release_*.py); do \
	  echo "== $$b"; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python $$b || exit 1; done

bench-peers: setup  ## this server vs MLServer, LitServe, BentoML on the same graph (virtualenvs in bench/.peers/, made on first run)
	$(BIN)/python bench/serve_peers.py

serve: setup  ## serve artifacts/model on DRIFTLOOP_SERVER_URL, else release.server_url (127.0.0.1:8080) (copies it into model_repository/flight-delay/1)
	mkdir -p model_repository/flight-delay && rm -rf model_repository/flight-delay/1 && cp -r artifacts/model model_repository/flight-delay/1
	$(BIN)/driftloop serve --repository model_repository --log-dir logs/predictions

demo: setup  ## the whole loop unattended in a scratch copy (after `make repro`): drift -> retrain -> canary -> promote
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/driftloop demo

clean:  ## remove the virtualenv and local caches (not the DVC cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
