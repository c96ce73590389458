# partner-guard — `make test` works on a fresh clone with only Python 3.11+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit demo bench fuzz clean

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

ENGINE ?= kafka
demo: $(STAMP)
	$(BIN)/partner-guard demo --engine $(ENGINE)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_decide.py

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
