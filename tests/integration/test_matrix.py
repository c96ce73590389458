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
