"""Core-test settings for the mutation run (`make mutants`, tests/mutants/core.py); no effect
on `make test`.

mutmut forks one process per mutant from a parent that has already run the tests once, so
the core's memos (functools caches, the leak scanner's per-value memo) arrive filled with the
original code's answers: a mutant behind a memo would look like a survivor. Each forked
process empties them before its first test. The run also uses a fixed, smaller Hypothesis
budget, so that its score is reproducible and it fits in minutes.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
from hypothesis import settings

from streams.core.leakscan import LeakScanner

MUTATION_RUN = os.environ.get("PARTNER_GUARD_MUTATION_RUN") == "1"
if MUTATION_RUN:
    settings.register_profile("mutation", deadline=None, max_examples=10, derandomize=True, database=None)
    settings.load_profile("mutation")

_emptied_in: list[int] = []  # the process whose memos were emptied


@pytest.fixture(autouse=True)
def _memos_of_the_mutant() -> None:
    """In a mutant's process, empty the memos it inherited (once, before its first test)."""
    if not MUTATION_RUN or "MUTANT_UNDER_TEST" not in os.environ or os.getpid() in _emptied_in:
        return
    _emptied_in.append(os.getpid())
    for name, module in list(sys.modules.items()):
        if name.startswith("streams.core") and module is not None:
            for value in list(vars(module).values()):
                clear = getattr(value, "cache_clear", None)
                if callable(clear):
                    clear()
    for found in gc.get_objects():
        if isinstance(found, LeakScanner):
            found.clear_memo()
