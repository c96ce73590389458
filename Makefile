# partner-guard — `make test` works on a fresh clone with only Python 3.11+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

.PHONY: test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check streams tests benchmarks
	$(BIN)/ruff format --check streams tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck
	$(BIN)/partner-guard rules check rules
	$(BIN)/partner-guard rules test rules
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/partner-guard demo

# Quix Streams pins confluent-kafka < 2.13: the peer pipelines get their own venv.
$(PEERS_STAMP): benchmarks/peers-requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/peers-requirements.txt
	touch $(PEERS_STAMP)

# The whole comparison on the same data in one run, then the pure core and state memory.
BENCH_RECORDS ?= 200000
bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py $(BENCH_RECORDS)
	$(BIN)/python benchmarks/bench_decide.py
	$(BIN)/python benchmarks/bench_state_memory.py

clean:
	rm -rf $(VENV) $(PEERS) .mypy_cache .pytest_cache .ruff_cache .hypothesis
