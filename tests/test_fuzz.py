"""Fuzzing: hostile bytes and mutated events never break an invariant (`tests/fuzzing.py`).

`make test` runs a short, derandomized pass and replays every saved case in
`tests/hostile/`; `make fuzz` runs for as long as asked and saves what it finds there.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset
from tests.conftest import RULES_DIR
from tests.fuzzing import (
    HOSTILE_DIR,
    OPEN_CLASSES,
    PERMISSIVE_RULE,
    FuzzCase,
    byte_case,
    check_case,
    fuzz_case,
    structured_case,
)

SHORT = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@SHORT
@given(structured_case(leave_out=OPEN_CLASSES))
def test_mutated_events_keep_every_invariant(ruleset: Ruleset, case: FuzzCase) -> None:
    check_case(case, ruleset)


@SHORT
@given(byte_case())
def test_raw_bytes_keep_every_invariant(ruleset: Ruleset, case: FuzzCase) -> None:
    check_case(case, ruleset)


@pytest.fixture(scope="module")
def permissive(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    """Untagged fields kept as they are: the leak scan is the only defense."""
    directory = tmp_path_factory.mktemp("fuzz-permissive")
    shutil.copy(RULES_DIR / "_leak-scan.yaml", directory / "_leak-scan.yaml")
    (directory / "permissive.yaml").write_text(PERMISSIVE_RULE)
    return load_ruleset(directory).with_keys({"permissive": b"p" * 32})


@SHORT
@given(structured_case(leave_out=OPEN_CLASSES))
def test_leak_scan_alone_keeps_every_invariant(permissive: Ruleset, case: FuzzCase) -> None:
    check_case(case, permissive)


def _saved() -> list[Any]:
    """Every saved case; those of a class still open on this branch are expected to fail."""
    cases = []
    for path in sorted(HOSTILE_DIR.glob("*.json")):
        open_class = next((c for c in OPEN_CLASSES if path.name.startswith(c + "-")), None)
        marks = [pytest.mark.xfail(reason=f"{open_class}: issue 8, built elsewhere")] if open_class else []
        cases.append(pytest.param(path, id=path.name, marks=marks))
    return cases


@pytest.mark.parametrize("path", _saved())
def test_saved_hostile_cases_keep_every_invariant(ruleset: Ruleset, path: Path) -> None:
    check_case(FuzzCase.loads(path.read_bytes()), ruleset)


@pytest.mark.skipif("PARTNER_GUARD_FUZZ_SECONDS" not in os.environ, reason="`make fuzz` only")
def test_fuzz_for_as_long_as_asked(ruleset: Ruleset) -> None:
    """Random (not derandomized) rounds until the time is up; a failure is saved, then raised."""
    deadline = time.monotonic() + float(os.environ["PARTNER_GUARD_FUZZ_SECONDS"])
    failing: list[FuzzCase] = []

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_case)
    def round_(case: FuzzCase) -> None:
        try:
            check_case(case, ruleset)
        except BaseException:
            failing.append(case)  # the last one is the shrunk example Hypothesis reports
            raise

    rounds = 0
    while time.monotonic() < deadline:
        try:
            round_()
        except BaseException:
            if failing:
                saved = failing[-1].save()
                print(f"saved failing case to {saved}")
            raise
        rounds += 1
    print(f"fuzzed {rounds} rounds of 500 cases without a failure")
