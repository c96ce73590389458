"""Readiness that follows the group, and the group lag it is judged by (no broker: fed by hand)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.ops.broker_watch import Readiness
from streams.runtime.ops.group_lag import STALL_AFTER_S, GroupView, _Progress, assess
from streams.runtime.ops.metrics import GuardMetrics

TP0, TP1 = ("in", 0), ("in", 1)


def _ready(owned: set[tuple[str, int]], view: GroupView | None) -> tuple[bool, float]:
    metrics = GuardMetrics()
    readiness = Readiness(metrics.ready, track_partitions=True)
    readiness.set_deciding(True)
    readiness.set_owned(frozenset(owned))
    readiness.set_group(view)
    value = metrics.registry.get_sample_value("partner_guard_ready")
    assert value is not None
    return readiness.is_ready(), value


@pytest.mark.parametrize(
    ("owned", "view", "ready"),
    [
        ({TP0}, None, True),  # owns partitions: consuming
        ({TP0}, GroupView(frozenset({TP0, TP1}), stalled=frozenset({TP1})), True),  # another's stall
        (set(), None, False),  # no partitions, the group unknown (just joined, or the broker was lost)
        (set(), GroupView(frozenset()), False),  # the input topics have no partitions (gone)
        (set(), GroupView(frozenset({TP0, TP1})), True),  # nothing waits: the group has nothing for it
        (set(), GroupView(frozenset({TP0, TP1}), stalled=frozenset({TP1})), False),  # records wait
        (set(), GroupView(frozenset({TP0, TP1}), unowned=frozenset()), True),  # all owned by members
        (set(), GroupView(frozenset({TP0, TP1}), unowned=frozenset({TP1})), False),  # one owned by none
    ],
)
def test_ready_means_owning_partitions_or_the_group_has_nothing_for_it(
    owned: set[tuple[str, int]], view: GroupView | None, ready: bool
) -> None:
    assert _ready(owned, view) == (ready, float(ready))


def test_engines_that_report_no_partitions_keep_the_old_meaning() -> None:
    metrics = GuardMetrics()
    readiness = Readiness(metrics.ready)  # the Faust engine
    readiness.set_deciding(True)
    readiness.set_group(GroupView(frozenset()))
    assert readiness.is_ready()


def test_losing_every_partition_is_logged_once_with_the_waiting_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = GuardMetrics()
    readiness = Readiness(metrics.ready, track_partitions=True)
    readiness.set_deciding(True)
    readiness.set_owned(frozenset({TP0}))
    stalled = GroupView(frozenset({TP0, TP1}), stalled=frozenset({TP0, TP1}))
    with caplog.at_level(logging.INFO, logger="streams.runtime.ops.broker_watch"):
        readiness.set_group(stalled)  # another instance's partitions stall: not this one's business
        readiness.set_owned(frozenset())  # until this one owns none
        readiness.set_group(stalled)
        readiness.set_owned(frozenset({TP1}))
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"]
    assert messages[0][1].startswith("not ready: this instance owns no input partition while the group")
    assert messages[1][1] == "consuming: ready"
    assert "in[0], in[1]" in caplog.records[0].getMessage()


def test_lag_is_end_minus_committed_and_nothing_committed_counts_from_the_log_start() -> None:
    progress: dict[tuple[str, int], _Progress] = {}
    lag, stalled = assess({TP0: (5, 20), TP1: (0, 3)}, {TP0: -1001, TP1: 7}, progress, now=0.0)
    assert lag == {TP0: 15, TP1: 0} and not stalled  # a committed offset past the listed end reads 0


def test_records_waiting_without_progress_stall_and_progress_clears_it() -> None:
    progress: dict[tuple[str, int], _Progress] = {}
    bounds = {TP0: (0, 10), TP1: (0, 10)}
    assess(bounds, {TP0: 4, TP1: 10}, progress, now=0.0)
    _, stalled = assess(bounds, {TP0: 4, TP1: 10}, progress, now=STALL_AFTER_S - 1)
    assert not stalled
    _, stalled = assess(bounds, {TP0: 4, TP1: 10}, progress, now=STALL_AFTER_S)
    assert stalled == {TP0}  # TP1 has nothing waiting: idle, not stalled
    _, stalled = assess(bounds, {TP0: 5, TP1: 10}, progress, now=STALL_AFTER_S + 1)
    assert not stalled  # it moved
    assess({TP0: (0, 10)}, {TP0: 5}, progress, now=STALL_AFTER_S + 2)
    assert set(progress) == {TP0}  # a partition gone with its topic is forgotten


@given(
    steps=st.lists(
        st.tuples(st.integers(0, 50), st.integers(-1, 50), st.floats(0, 100)), min_size=1, max_size=20
    )
)
def test_property_a_partition_stalls_only_with_records_waiting_and_no_progress_for_the_window(
    steps: list[tuple[int, int, float]],
) -> None:
    progress: dict[tuple[str, int], _Progress] = {}
    now, last_position, moved_at = 0.0, None, 0.0
    for end, committed, wait in steps:
        now += wait
        position = committed if committed >= 0 else 0
        if position != last_position:
            last_position, moved_at = position, now
        lag, stalled = assess({TP0: (0, end)}, {TP0: committed}, progress, now)
        assert lag[TP0] == max(0, end - position)
        assert (TP0 in stalled) == (lag[TP0] > 0 and now - moved_at >= STALL_AFTER_S)
