# partner-guard — `make test` works on a fresh clone with only Python 3.11+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
# pytest-xdist workers: the suite mostly waits (guards joining groups, brokers answering), so
# four at once (on two cores) take a third of the time; tests/conftest.py says which tests keep
# to one worker.
PYTEST_WORKERS ?= 4

.PHONY: test lint typecheck unit demo bench fuzz soak reliability matrix reason-docs mutants clean

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
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

test: lint typecheck
	$(BIN)/partner-guard rules check rules
	$(BIN)/partner-guard rules test rules
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

ENGINE ?= kafka
demo: $(STAMP)
	$(BIN)/partner-guard demo --engine $(ENGINE)

# Quix Streams pins confluent-kafka < 2.13: the peer pipelines get their own venv.
$(PEERS_STAMP): benchmarks/peers-requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/peers-requirements.txt
	touch $(PEERS_STAMP)

# The whole comparison on the same data in one run (cold: every process reads records it has
# never seen), then the shell's cost per input cold and warm, the pure core and state memory.
BENCH_RECORDS ?= 300000
bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py $(BENCH_RECORDS)
	$(BIN)/python -m benchmarks.bench_emit --cold 20000
	$(BIN)/python -m benchmarks.bench_decide
	$(BIN)/python benchmarks/bench_state_memory.py

# Fuzz for FUZZ_SECONDS with Hypothesis, then as long again with atheris (libFuzzer) when
# it installs; failing examples are saved in tests/hostile/ and replayed by `make test`.
# Each record must be decided within FUZZ_MAX_MS (the suite itself has no timed assertions).
FUZZ_SECONDS ?= 120
FUZZ_MAX_MS ?= 500
fuzz: $(STAMP)
	@status=0; \
	PARTNER_GUARD_FUZZ_SECONDS=$(FUZZ_SECONDS) PARTNER_GUARD_FUZZ_MAX_MS=$(FUZZ_MAX_MS) \
		$(BIN)/pytest -q -s -p no:cacheprovider --timeout=0 tests/test_fuzz.py -k fuzz_for_as_long || status=1; \
	$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[fuzz]' \
		|| echo "atheris did not install here: fuzzed with Hypothesis only"; \
	if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		PARTNER_GUARD_FUZZ_MAX_MS=$(FUZZ_MAX_MS) $(BIN)/python tests/fuzz_atheris.py \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -print_final_stats=1 || status=1; fi; \
	exit $$status

# Faults over time (not in CI). `make test` runs the fault scenarios short; `make reliability`
# runs them at the sizes docs/reliability.md's table reports (RELIABILITY=long); `make soak`
# runs the soak, then the scenarios longer still (RELIABILITY=soak).
SOAK_MINUTES ?= 30
SOAK_OUT ?= soak-results
RELIABILITY ?= long
RELIABILITY_TESTS := tests/integration/test_crash_loop.py tests/integration/test_flaky_network.py \
	tests/integration/test_zombie.py tests/integration/test_state_faults.py \
	tests/integration/test_logs_and_secrets.py

soak: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,soak]'
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES) --out $(SOAK_OUT)
	$(MAKE) reliability RELIABILITY=soak

# The fault scenarios alone, each ledger appended to $(SOAK_OUT)/reliability.jsonl.
reliability: $(STAMP)
	mkdir -p $(SOAK_OUT)
	PARTNER_GUARD_RELIABILITY=$(RELIABILITY) \
	PARTNER_GUARD_RELIABILITY_LOG=$(abspath $(SOAK_OUT))/reliability.jsonl $(BIN)/pytest -q -s \
		-o timeout=3600 $(RELIABILITY_TESTS)

# The feature matrix in full: every cell of engine x state store x workers x input format x
# payload mode (`make test` runs a pairwise subset), then its table in docs/matrix.md.
MATRIX_OUT ?= matrix-results
matrix: $(STAMP)
	mkdir -p $(MATRIX_OUT)
	rm -f $(MATRIX_OUT)/matrix.jsonl
	@status=0; \
	PARTNER_GUARD_TEST_MATRIX=full PARTNER_GUARD_TEST_MATRIX_LOG=$(abspath $(MATRIX_OUT))/matrix.jsonl \
		$(BIN)/pytest -q -n $(PYTEST_WORKERS) -rxX tests/integration/test_matrix.py || status=1; \
	$(BIN)/python -m tests.integration.matrix $(MATRIX_OUT)/matrix.jsonl docs/matrix.md; \
	exit $$status

# docs/reason-codes.md's table, from the one table of reason explanations in the code
reason-docs: $(STAMP)
	$(BIN)/python -m streams.offline.reasondoc --write

# Tests that fail when a mechanism is taken out (not in CI): the promise mutants of
# tests/mutants/catalogue.py, each applied to a copy of the tree and run against the tests that
# name its promise, then mutmut over the core's consent, signals, leak scan, transforms and
# decide modules with the score per module. mutmut 3.8 needs a newer click than faust-streaming
# allows, so it gets its own venv. MUTMUT_CHILDREN mutants at once (the machine is shared);
# MUTMUT_SAMPLE mutants of each module, spread evenly (0: all ~1,850, an hour or more).
MUTMUT_VENV := .venv-mutmut
MUTMUT_STAMP := $(MUTMUT_VENV)/.installed
MUTMUT_CHILDREN ?= 1
MUTMUT_SAMPLE ?= 30
$(MUTMUT_STAMP): pyproject.toml
	test -x $(MUTMUT_VENV)/bin/python || $(PYTHON) -m venv $(MUTMUT_VENV)
	$(MUTMUT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MUTMUT_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(MUTMUT_VENV)/bin/python -m pip install --quiet 'mutmut==3.8.1'  # warns: faust's click pin
	touch $(MUTMUT_STAMP)

mutants: $(STAMP) $(MUTMUT_STAMP)
	@status=0; \
	$(BIN)/python -m tests.mutants.run || status=1; \
	MUTMUT_CHILDREN=$(MUTMUT_CHILDREN) $(MUTMUT_VENV)/bin/python -m tests.mutants.core \
		--sample $(MUTMUT_SAMPLE) || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) $(PEERS) $(MUTMUT_VENV) mutants .mypy_cache .pytest_cache .ruff_cache .hypothesis
