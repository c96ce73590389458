"""The bounded memo: never more entries than its limit, and the newest value always kept."""

from __future__ import annotations

from streams.core.memo import remember


def test_a_full_memo_is_emptied_before_the_new_entry_is_stored() -> None:
    memo: dict[str, int] = {}
    for index in range(5):
        remember(memo, f"k{index}", index, limit=3)
        assert len(memo) <= 3 and memo[f"k{index}"] == index
    assert memo == {"k3": 3, "k4": 4}
