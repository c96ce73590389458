"""The feature matrix (tests/integration/matrix.py): the same scenario in every cell of engine x
state store x workers x input format x payload mode.

`make test` runs the pairwise subset (every pair of axis values in at least one cell);
`make matrix` (PARTNER_GUARD_TEST_MATRIX=full) runs every cell and writes docs/matrix.md.
Pruned: the Faust engine with `--workers 2` (refused at start, see `matrix.refusal`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker
from tests.integration import matrix
from tests.integration.kafka_helpers import PARTNERS
from tests.integration.matrix import Cell

FULL = os.environ.get("PARTNER_GUARD_TEST_MATRIX", "pairwise") == "full"
CELLS = matrix.valid_cells() if FULL else matrix.pairwise_cells()


def _param(cell: Cell) -> object:
    """A cell as a test parameter; a cell a known bug breaks is a strict xfail naming it (only
    `KnownBugError` counts: any other failure still fails, and a fixed bug shows as XPASS)."""
    bugs = [bug.name for bug in matrix.KNOWN_BUGS if bug.applies(cell)]
    marks = (
        [pytest.mark.xfail(raises=matrix.KnownBugError, strict=True, reason="; ".join(bugs))] if bugs else []
    )
    return pytest.param(cell, id=cell.id, marks=marks)


@pytest.mark.integration
@pytest.mark.timeout(1200)  # each wait inside has its own, shorter hang guard
@pytest.mark.parametrize("cell", [_param(c) for c in CELLS])
def test_cell(cell: Cell, broker: EmbeddedBroker, tmp_path: Path) -> None:
    matrix.run_cell(cell, broker, tmp_path)


def test_pairwise_subset_covers_every_pair_of_axis_values() -> None:
    cells = matrix.valid_cells()
    chosen = matrix.pairwise_cells(cells)
    wanted = set().union(*(matrix._pairs(c) for c in cells))
    assert set().union(*(matrix._pairs(c) for c in chosen)) == wanted
    assert len(chosen) < len(cells) and chosen == matrix.pairwise_cells(cells)  # smaller, deterministic


def test_pruned_cells_are_exactly_the_refused_ones() -> None:
    pruned = [c for c in matrix.every_cell() if matrix.refusal(c)]
    assert {c.id for c in pruned} == {
        f"faust-{store}-w2-{fmt}-{payload}"
        for store in ("memory", "rocksdb")
        for fmt in ("json", "avro")
        for payload in ("full", "reference")
    }
    assert len(matrix.valid_cells()) == 24


class _Broker:
    bootstrap = "127.0.0.1:1"  # never dialled: the checks below read only what a run collected


def _collected(tmp_path: Path, outcomes: list[list[str]], forwarded: list[bytes] | None = None) -> matrix.Run:
    """A run whose outputs are given: one input per outcome list (the same for both partners)."""
    run = matrix.Run(Cell("kafka", "memory", 1, "json", "full"), _Broker(), tmp_path)  # type: ignore[arg-type]
    encoder = matrix.Encoder("json")
    run.inputs = [
        encoder.event(b"a", {"event_id": f"ev-{n}", "event_type": "app_open", "event_time": 1}, "traffic")
        for n in range(len(outcomes))
    ]
    run.outcomes = {p: [list(o) for o in outcomes] for p in PARTNERS}
    run.forwarded = {p: list(forwarded or []) for p in PARTNERS}
    run.phantoms = []
    return run


def test_conservation_fails_on_a_lost_input_and_counts_duplicates(tmp_path: Path) -> None:
    run = _collected(tmp_path, [["forward"], ["malformed", "malformed"]])
    matrix.conservation(run)
    assert run.row.lost == 0 and run.row.duplicates == 2  # one extra output per partner
    lost = _collected(tmp_path, [["forward"], []])
    with pytest.raises(AssertionError):
        matrix.conservation(lost)
    assert lost.row.lost == len(PARTNERS)


def test_conservation_fails_on_a_forwarded_poison_record(tmp_path: Path) -> None:
    run = _collected(tmp_path, [["forward"]])
    run.inputs[0].role = "poison:undecodable"
    with pytest.raises(AssertionError, match="was forwarded"):
        matrix.conservation(run)


def test_the_leak_audit_fails_on_a_raw_identifier(tmp_path: Path) -> None:
    run = _collected(tmp_path, [["event_type_not_allowed"]], forwarded=[b'{"account": "acct-0000042"}'])
    with pytest.raises(AssertionError, match="acct-0000042"):
        matrix.leaks(run)
    assert run.row.leaked == len(PARTNERS)


def test_a_failure_is_put_down_to_a_known_bug_only_with_its_evidence() -> None:
    cell = Cell("kafka", "memory", 1, "avro", "reference")
    assert matrix.known_bug(cell, "reference_mode", "kept as a copy: ['avro input at 0:12']")
    assert matrix.known_bug(cell, "reference_mode", "AssertionError: lost 3 inputs") is None
    assert matrix.known_bug(cell, "replay", "kept as a copy: ['avro input at 0:12']") is None  # not that step
    assert (
        matrix.known_bug(Cell("kafka", "memory", 1, "json", "reference"), "reference_mode", "kept as a copy")
        is None
    )
