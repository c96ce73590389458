"""pytest plugin the mutant runner loads (`-p tests.mutants.plugin`): refuses to run unless the
`streams` package imported is the mutated copy, and the copy holds the mutant's text.

Without it, an editable install of the original tree could be imported instead, and every
mutant would "survive" (or a stale copy would be tested) without anyone noticing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT_ENV = "PARTNER_GUARD_MUTANT_ROOT"
FILE_ENV = "PARTNER_GUARD_MUTANT_FILE"
TEXT_ENV = "PARTNER_GUARD_MUTANT_TEXT"


def pytest_configure(config: pytest.Config) -> None:
    """Check where `streams` comes from before any test runs."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return
    import streams

    imported = Path(streams.__file__).resolve()
    if not imported.is_relative_to(Path(root).resolve()):
        raise pytest.UsageError(f"streams was imported from {imported}, not from the mutated copy {root}")
    mutated, text = os.environ.get(FILE_ENV), os.environ.get(TEXT_ENV)
    if mutated and text is not None and text not in (Path(root) / mutated).read_text():
        raise pytest.UsageError(f"{mutated} in {root} does not hold the mutant's text")
