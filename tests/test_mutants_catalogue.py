"""The promise mutants stay armed: every promise has one, and every mutant's target text is still
in the tree exactly once, so a refactor cannot silently disarm one (tests/mutants/catalogue.py;
the mutants themselves run in `make mutants`, not here)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.mutants.catalogue import MUTANTS, PROMISES, Mutant
from tests.mutants.run import copy_tree, run_pytest, try_mutant

ROOT = Path(__file__).resolve().parents[1]
ARMED = [m for m in MUTANTS if m.armed()]


def test_every_promise_of_the_promise_table_has_a_mutant() -> None:
    table = re.findall(r"^\| (P\d+) \|", (ROOT / "docs" / "promises.md").read_text(), re.MULTILINE)
    assert table, "docs/promises.md lists no promise"
    assert set(table) <= set(PROMISES), (
        f"add the new promise to PROMISES: {sorted(set(table) - set(PROMISES))}"
    )
    covered = {m.promise for m in MUTANTS}
    assert set(PROMISES) <= covered, f"promises without a mutant: {sorted(set(PROMISES) - covered)}"
    assert {m.promise for m in MUTANTS} <= set(PROMISES)


def test_mutant_ids_are_unique_and_pending_ones_say_why() -> None:
    assert not [i for i, n in Counter(m.id for m in MUTANTS).items() if n > 1]
    for mutant in MUTANTS:
        assert mutant.armed() or (mutant.pending or "").strip(), mutant.id


def test_a_promise_in_the_table_has_an_armed_mutant() -> None:
    """A mutant may wait for its promise's mechanism only while the promise is not in the table."""
    table = set(re.findall(r"^\| (P\d+) \|", (ROOT / "docs" / "promises.md").read_text(), re.MULTILINE))
    armed = {m.promise for m in ARMED}
    assert table <= armed, (
        f"aim a mutant of {sorted(table - armed)} at its mechanism (tests/mutants/catalogue.py)"
    )


@pytest.mark.parametrize("mutant", ARMED, ids=[m.id for m in ARMED])
def test_the_target_text_is_in_the_tree_exactly_once(mutant: Mutant) -> None:
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.id}: re-aim it at {mutant.path}'s current code"
    assert mutant.new != mutant.old and mutant.new not in source
    compile(source.replace(mutant.old, mutant.new, 1), mutant.path, "exec")  # a mutant, not a typo


@pytest.mark.parametrize("mutant", ARMED, ids=[m.id for m in ARMED])
def test_the_tests_it_names_exist(mutant: Mutant) -> None:
    assert mutant.tests, mutant.id
    arguments = iter(mutant.tests)
    for argument in arguments:
        if argument == "-k":
            next(arguments)  # the expression
            continue
        path, _, name = argument.partition("::")
        assert (ROOT / path).is_file(), f"{mutant.id}: no test file {path}"
        if name:
            assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", (ROOT / path).read_text(), re.M)


def test_the_runner_tells_a_killed_mutant_from_a_survivor_and_runs_only_the_copy(tmp_path: Path) -> None:
    """The runner itself can fail: a mutant its tests catch is killed, a harmless edit survives,
    and pytest refuses to run when `streams` would come from outside the copy."""
    tree = copy_tree(tmp_path)
    memo, selection = "streams/core/memo.py", ("tests/core/test_memo.py",)
    caught = Mutant(
        "memo-bound", "P5", "", memo, "    if len(memo) >= limit:\n", "    if False:\n", selection
    )
    harmless = Mutant(
        "memo-comment", "P5", "", memo, '    """Store `value`', '    """Keep `value`', selection
    )
    assert try_mutant(tree, caught, None).startswith("killed: FAILED tests/core/test_memo.py::")
    assert try_mutant(tree, harmless, None) == "SURVIVED"
    assert (tree / memo).read_text() == (ROOT / memo).read_text()  # restored after each
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _ = run_pytest(tree, selection, None, root_override=elsewhere)
    assert code == pytest.ExitCode.USAGE_ERROR
