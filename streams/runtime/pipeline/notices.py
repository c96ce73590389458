"""The shell of opt-out notices (P12): remember forwards, act on consent changes, exactly once.

- `ForwardTracker` (the decider calls it for every forward): a forward that carried an
  identifier of the subject writes the (partner, subject) marker to the forwarded topic,
  in the batch's transaction, only when the marker changes (`core.notices.marker_update`).
- `OptoutNotifier` (the job calls it for every record of the consent topic, which it
  consumes a second time as a group input, its partitions shared out like the event
  topics'): reads the subject's notice state and markers, asks `core.notices.decide_notices`,
  and produces the notices, the new notice state and the marker tombstones into the batch's
  transaction, whose commit also commits the consent offset. A crash before the commit
  replays the record; after it, the notice state says it was acted on.

Both stage what they write in the forwarded table's layer of the batch (read before the
table; folded in at the commit, dropped at an abort), so a later input of the same or the
next batch sees it before it is read back from the topic.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from streams.core.codec import decode_state_record, parse_strict_json
from streams.core.consent import subjects_of
from streams.core.models import ConsentRecord, Decision, Event
from streams.core.notices import (
    CHOICES,
    ConsentChange,
    NoticePlan,
    decide_notices,
    forwarded_ids,
    marker_key,
    marker_update,
    opt_out_choices,
    state_key,
)
from streams.runtime.state.tables import MAX_FUTURE_SKEW_MS, ForwardedTable, canonical_subject, updated_at_ms

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000
# Where an output goes: (topic, value or None for a tombstone, key).
NoticeSink = Callable[[str, bytes | None, bytes], None]


def refresh_ms(lookback: timedelta) -> int:
    """How stale a marker's time may be before a forward rewrites it: a day, or a tenth of a
    short window (tests), so most forwards write nothing."""
    return max(1, min(DAY_MS, int(lookback.total_seconds() * 1000) // 10))


class ForwardTracker:
    """Builds the marker writes of forwards (on the hot path: nothing when nothing changes)."""

    def __init__(
        self,
        plans: dict[str, NoticePlan],
        table: ForwardedTable,
        topic: str,
        lookback: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fields = {
            partner: plan.fields for partner, plan in plans.items() if plan.tracked
        }  # partner -> event type -> identifier fields
        self.table = table
        self.topic = topic
        self._refresh_ms = refresh_ms(lookback)
        self._clock = clock

    def markers(self, event: Event, decision: Decision) -> list[tuple[bytes, bytes]]:
        """(key, value) of every marker this forward changes."""
        by_type = self._fields.get(decision.partner)
        fields = by_type.get(event.event_type) if by_type is not None else None
        if not fields or decision.record is None:
            return []
        ids = forwarded_ids(decision.record, fields)
        if not ids:
            return []
        now_ms = int(self._clock() * 1000)
        writes = []
        partner = decision.partner
        for subject in subjects_of(event):
            updated = marker_update(self.table.marker(partner, subject), ids, now_ms, self._refresh_ms)
            if updated is not None:
                writes.append((marker_key(partner, subject), updated.encode()))
        return writes

    def stage(self, writes: list[tuple[bytes, bytes]]) -> None:
        """The input's outputs were all built: its marker writes count from now on."""
        for key, value in writes:
            self.table.stage(key, value)


class OptoutNotifier:
    """Acts on one consent-topic record: notices, notice state, marker tombstones."""

    def __init__(
        self,
        plans: dict[str, NoticePlan],
        digest: str,
        table: ForwardedTable,
        forwarded_topic: str,
        lookback: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plans = {partner: plan for partner, plan in plans.items() if plan.kinds}
        self.digest = digest
        self.table = table
        self.forwarded_topic = forwarded_topic
        self._lookback_ms = int(lookback.total_seconds() * 1000)
        self._refresh_ms = refresh_ms(lookback)
        self._clock = clock
        self.invalid_records = 0

    def change_of(self, subject: str, value: bytes | None, timestamp_ms: int, now_ms: int) -> ConsentChange:
        """The consent change a record stands for. A tombstone or a deletion request is a
        deletion; a record that is not a valid consent record is read as every opt-out (fail
        closed, like the consent table), at its Kafka timestamp."""
        if value is None:
            return ConsentChange(subject, "deletion", timestamp_ms)
        try:
            doc = parse_strict_json(value)
            if isinstance(doc, dict) and doc.get("request") == "deletion":
                if doc.get("subject") != subject:
                    raise ValueError("key and subject differ")
                at_ms = updated_at_ms(doc.get("updated_at"), now_ms) or timestamp_ms
                return ConsentChange(subject, "deletion", at_ms)
            record = decode_state_record(value, ConsentRecord)
            if record.subject != subject:
                raise ValueError("key and subject differ")
            return ConsentChange(
                subject, "update", updated_at_ms(record.updated_at, now_ms), opt_out_choices(record)
            )
        except Exception as exc:  # strict parse: anything unreadable fails closed
            self.invalid_records += 1
            log.warning("consent record unreadable for notices (%s): every opt-out", type(exc).__name__)
            return ConsentChange(subject, "update", timestamp_ms, frozenset(CHOICES))

    def on_record(
        self,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        notices: Counter[tuple[str, str]],
        sink: NoticeSink,
    ) -> None:
        """Act on one consent-topic record; count the notices sent in `notices` (partner, kind)."""
        try:
            subject = key.decode("utf-8") if key else ""
        except UnicodeDecodeError:
            subject = ""
        if not canonical_subject(subject):
            self.invalid_records += 1
            return  # names no subject a marker is kept under
        now_ms = int(self._clock() * 1000)
        if timestamp_ms is None or not 0 <= timestamp_ms <= now_ms + MAX_FUTURE_SKEW_MS:
            timestamp_ms = now_ms  # a producer sets the timestamp: never trust one out of range
        change = self.change_of(subject, value, timestamp_ms, now_ms)
        markers = {}
        for partner in self.plans:
            marker = self.table.marker(partner, subject)
            if marker is not None:
                markers[partner] = marker
        previous = self.table.notice_state(subject)
        if not markers and previous is None:
            return  # no partner received anything about this subject: nothing to remember
        outcome = decide_notices(
            change, previous, markers, self.plans, self.digest, now_ms, self._lookback_ms, self._refresh_ms
        )
        outputs: list[tuple[str, bytes | None, bytes]] = []  # all built before any is sent
        for notice in outcome.notices:
            notice_key, notice_value = notice.record()
            outputs.append((notice.topic, notice_value, notice_key))
        writes: list[tuple[bytes, bytes | None]] = [
            (marker_key(partner, subject), None)
            for partner in dict.fromkeys([*outcome.delete_markers, *outcome.expired_markers])
        ]
        if outcome.write_state:
            writes.append((state_key(subject), outcome.state.encode() if outcome.state else None))
        for topic, value, key in outputs:
            sink(topic, value, key)
        for key, value in writes:
            sink(self.forwarded_topic, value, key)
            self.table.stage(key, value)
        for notice in outcome.notices:
            notices[(notice.partner, notice.kind)] += 1
