# driftloop: `make repro` sets up .venv and runs the build plane; `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: help setup repro test test-fast lint fuzz bench serve clean

help:  ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(BIN)/.installed  ## create .venv and install driftloop with its dev tools (torch==2.13.0 CPU)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

repro: setup  ## dvc repro: snapshot -> validate -> features -> train -> export -> optimize -> evaluate -> gate -> package
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup  ## the whole test suite (under 10 minutes on 2 cores)
	$(BIN)/python -m pytest

test-fast: setup  ## the tests that start no server and run no dvc repro
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## ruff
	$(BIN)/python -m ruff check driftloop tasks flows serving commands tests bench

fuzz: setup  ## schemathesis on a live server (artifacts/model, else a test package): all phases, every check, 300 examples per operation
	$(BIN)/python tests/serving/fuzz_contract.py --max-examples 300

bench: setup  ## every benchmark in bench/ (needs `make repro` first); results in bench/results/
	@for b in bench/build_pipeline.py bench/build_optimize.py bench/serve_http.py bench/serve_batching.py $(wildcard bench/flows_*.py) $(wildcard bench/release_*.py); do \
	  echo "== $$b"; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python $$b || exit 1; done

serve: setup  ## serve artifacts/model on 127.0.0.1:8080 (copies it into model_repository/flight-delay/1)
	mkdir -p model_repository/flight-delay && rm -rf model_repository/flight-delay/1 && cp -r artifacts/model model_repository/flight-delay/1
	$(BIN)/driftloop serve --repository model_repository --port 8080 --log-dir logs/predictions

clean:  ## remove the virtualenv and local caches (not the DVC cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
