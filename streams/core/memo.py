"""Process-local memos with a hard bound on their size.

The core memoizes pure results (leak-scan findings per value, condition results per view).
A memo that only grows would let hostile traffic (every value distinct) take all memory, so
each is emptied when it reaches its limit: no per-hit bookkeeping as in an LRU, and after a
clear the hot values are back within a few records.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> None:
    """Store `value` under `key`, first emptying `memo` when it already holds `limit` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
