"""Reference mode: only a position below its partition's log start is `source_expired`.

A blocked record kept by reference names its original by (topic, partition, offset). A
position outside anything the topic ever held (a future offset, a partition or topic that
does not exist, a number no topic can hold) was not written by the guard: replay reports it
as an `invalid_record`, which changes its exit code. The broker cases run against the
embedded broker in `tests/integration/test_reference_originals.py`; the embedded broker
cannot move a log start (no DeleteRecords), so the classification is checked here.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.audit.source import SOURCE_EXPIRED, SOURCE_INVALID, absent_because, resolve_references


@pytest.mark.parametrize(
    ("offset", "low", "high", "expired"),
    [
        (3, 10, 20, True),  # below the log start: retention dropped it
        (0, 1, 1, True),
        (10, 10, 20, False),  # inside, but no committed record there (a marker, an aborted record)
        (19, 10, 20, False),
        (20, 10, 20, False),  # the end: not written yet
        (10**12, 0, 5, False),
        (0, 0, 0, False),  # an empty partition never held offset 0
    ],
)
def test_only_a_position_below_the_log_start_is_expired(
    offset: int, low: int, high: int, expired: bool
) -> None:
    why = absent_because(offset, low, high)
    assert (why is None) == expired


@pytest.mark.parametrize(("partition", "offset"), [(-1, 5), (0, -2), (2**31, 0), (0, 2**63)])
def test_a_reference_no_topic_can_hold_is_invalid_without_asking_the_broker(
    partition: int, offset: int
) -> None:
    view: dict[str, Any] = {
        "payload_mode": "reference",
        "source": {"topic": "internal.events", "partition": partition, "offset": offset},
    }
    resolve_references([view], {"bootstrap.servers": "127.0.0.1:1"})  # a closed port: never asked
    assert "is no position in a topic" in view[SOURCE_INVALID] and SOURCE_EXPIRED not in view
