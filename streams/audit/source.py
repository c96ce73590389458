"""Reading blocked records: from the blocked topic (filtered) or from an exported JSON Lines file.

Both formats are read: each record is split into one view per (input, partner)
(`partner_views`), which is what filters, replay, reports and exports work on.

Time filters work on brokers that cannot look offsets up by time: the reader starts at the
beginning and filters on each record's timestamp (when it was withheld).

Whatever is in the topic or file is passed on, never dropped: bytes that are not a JSON
object come out as `{"_invalid": why, ...where it was read}`, which replay reports as an
`invalid_record`, whatever the partner, reason or rule filters (only time filters apply).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from streams.runtime.formats.payload import FETCHED_ORIGINAL
from streams.runtime.formats.records import partner_views

# How long a reader waits for a slow broker before it gives up (and the command cannot run).
READ_TIMEOUT_S = 120.0
# After the end offsets are reached: how long to keep taking what was already fetched.
DRAIN_S = 5.0


@dataclass(frozen=True)
class BlockedFilter:
    """Which blocked records to look at."""

    since_ms: int | None = None
    until_ms: int | None = None
    partner: str | None = None
    reason: str | None = None
    rule_id: str | None = None

    def accepts(self, blocked: Any) -> bool:
        """True when the record passes every filter (any JSON value: never raises)."""
        if not isinstance(blocked, dict):
            return not (self.partner or self.reason or self.rule_id or self.since_ms or self.until_ms)
        stamp = blocked.get("_timestamp_ms")
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            stamp = None
        if self.since_ms is not None and (stamp is None or stamp < self.since_ms):
            return False
        if self.until_ms is not None and (stamp is None or stamp >= self.until_ms):
            return False
        if "_invalid" in blocked:
            return True  # unattributable: never hidden by partner, reason or rule filters
        if self.partner and blocked.get("partner") != self.partner:
            return False
        reasons = blocked.get("reasons")
        if self.reason and not (isinstance(reasons, list) and self.reason in reasons):
            return False
        return not (self.rule_id and blocked.get("rule_id") != self.rule_id)


def parse_time(text: str | None) -> int | None:
    """Epoch ms of an ISO date or date-time (UTC when no offset is given)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def read_to_end(
    consumer: Consumer,
    partitions: list[TopicPartition],
    timeout_s: float = READ_TIMEOUT_S,
    stop_at: dict[tuple[str, int], int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[Message]:
    """Assign `partitions` (at their offsets) and yield every record up to the end offsets.

    Ends are looked up first; a partition is done when the consumer's position (which
    steps over transaction markers) reaches its end. What is already fetched past it is
    drained too (Tansu answers the base offset of the last batch + 1 as the end). A slow
    broker is waited for, up to `timeout_s` without progress; then `RuntimeError` (the
    caller could not run).
    `stop_at` ends partitions earlier (exclusive offsets). `on_progress(read, to_read)` is
    called after every fetch.
    """
    ends = {}
    for tp in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
        ends[(tp.topic, tp.partition)] = min(high, (stop_at or {}).get((tp.topic, tp.partition), high))
    consumer.assign(partitions)
    deadline = time.monotonic() + timeout_s
    pending = {key for key, end in ends.items() if end > 0}
    starts = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in partitions}
    to_read = sum(max(0, end - starts[key]) for key, end in ends.items())
    read = 0
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no progress for {timeout_s:.0f} s reading {sorted({t for t, _ in pending})}")
        batch = consumer.consume(5000, 0.3)
        if batch:
            deadline = time.monotonic() + timeout_s  # a stall, not a long topic, is the failure
        for message in batch:
            if message.error() is None:
                yield message
        read += len(batch)
        if on_progress is not None:
            on_progress(min(read, to_read), to_read)
        for tp in consumer.position([TopicPartition(t, p) for t, p in pending]):
            if tp.offset >= ends[(tp.topic, tp.partition)]:
                pending.discard((tp.topic, tp.partition))
    drain_until = time.monotonic() + DRAIN_S  # a live topic keeps growing: drain briefly
    while time.monotonic() < drain_until and (batch := consumer.consume(5000, 0.2)):
        yield from (m for m in batch if m.error() is None)


def read_topic(
    kafka_config: dict[str, Any],
    topic: str,
    wanted: BlockedFilter,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Blocked records from the topic (read_committed), oldest first per partition."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"partner-guard-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise RuntimeError(f"blocked topic '{topic}' not found")
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        for message in read_to_end(consumer, partitions, on_progress=on_progress):
            kind, stamp = message.timestamp()
            where = {"_timestamp_ms": stamp if kind else None, "_partition": message.partition()}
            where["_offset"] = message.offset()
            for view in partner_views(_parse(message.value() or b"", where)):
                if wanted.accepts(view):
                    yield view
    finally:
        consumer.close()


def _parse(raw: bytes, where: dict[str, Any]) -> dict[str, Any]:
    """A blocked record with where it was read; an `_invalid` marker when not a JSON object."""
    try:
        blocked = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_invalid": "not JSON", **where}
    if not isinstance(blocked, dict):
        return {"_invalid": f"not a JSON object ({type(blocked).__name__})", **where}
    return {**blocked, **where} if where.get("_offset") is not None else {**where, **blocked}


def read_file(path: Path, wanted: BlockedFilter) -> Iterator[dict[str, Any]]:
    """Blocked records from an exported JSON Lines file (one per non-blank line)."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                for view in partner_views(_parse(line, {"_line": number})):
                    if wanted.accepts(view):
                        yield view


def export(records: Iterator[dict[str, Any]], path: Path) -> int:
    """Write blocked records as JSON Lines; returns the count."""
    count = 0
    with path.open("wb") as handle:
        for blocked in records:
            handle.write(orjson.dumps(blocked) + b"\n")
            count += 1
    return count


def fetch_records(
    kafka_config: dict[str, Any], wanted: set[tuple[str, int, int]]
) -> dict[tuple[str, int, int], bytes | None]:
    """The values at exact (topic, partition, offset) positions, read_committed.

    Positions that do not exist (any more, or not yet) are missing from the answer.
    """
    by_partition: dict[tuple[str, int], set[int]] = {}
    for topic, partition, offset in wanted:
        by_partition.setdefault((topic, partition), set()).add(offset)
    if not by_partition:
        return {}
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"partner-guard-fetch-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",  # a position past the end yields nothing, not the start
        }
    )
    found: dict[tuple[str, int, int], bytes | None] = {}
    try:
        metadata = consumer.list_topics(timeout=10)
        listed = {t: m.partitions for t, m in metadata.topics.items() if m.error is None}
        assignable = {(t, p): o for (t, p), o in by_partition.items() if p in listed.get(t, {})}
        partitions = [TopicPartition(t, p, min(o)) for (t, p), o in assignable.items()]
        stop_at = {key: max(offsets) + 1 for key, offsets in assignable.items()}
        for message in read_to_end(consumer, partitions, stop_at=stop_at) if partitions else ():
            at_topic, at_partition, at = message.topic(), message.partition(), message.offset()
            if at_topic is None or at_partition is None or at is None:
                continue
            if at in assignable.get((at_topic, at_partition), ()):
                found[(at_topic, at_partition, at)] = message.value()
    finally:
        consumer.close()
    return found


SOURCE_EXPIRED = "_source_expired"  # view member: the referenced source record is gone
SOURCE_MISMATCH = "_source_mismatch"  # view member: what the source holds is not what was decided


def _position(view: dict[str, Any]) -> tuple[str, int, int] | None:
    source = view.get("source")
    if not isinstance(source, dict):
        return None
    topic: Any = source.get("topic")
    partition: Any = source.get("partition")
    offset: Any = source.get("offset")
    numbers = (partition, offset)
    if not isinstance(topic, str) or not all(type(n) is int for n in numbers):
        return None
    return topic, int(partition), int(offset)


def resolve_references(views: list[Any], kafka_config: dict[str, Any]) -> None:
    """Fetch the originals of `reference`-mode views from their source topics, in place.

    A fetched record whose SHA-256 and size match the reference is kept beside the view
    (`FETCHED_ORIGINAL`; replay then verifies it like a copy); a record retention has dropped
    marks the view `source_expired`; different bytes at that offset mark it a mismatch.
    """
    wanted: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for view in views:
        if not isinstance(view, dict) or view.get("payload_mode") != "reference":
            continue
        if view.get(FETCHED_ORIGINAL) is not None:
            continue
        position = _position(view)
        if position is None:
            view[SOURCE_MISMATCH] = "reference without a valid source position"
        else:
            wanted.setdefault(position, []).append(view)
    found = fetch_records(kafka_config, set(wanted)) if wanted else {}
    for position, referring in wanted.items():
        raw = found.get(position)
        for view in referring:
            _resolve(view, raw)


def _resolve(view: dict[str, Any], raw: bytes | None) -> None:
    if raw is None:
        view[SOURCE_EXPIRED] = True
    elif hashlib.sha256(raw).hexdigest() != view.get("original_sha256") or len(raw) != view.get(
        "original_size"
    ):
        view[SOURCE_MISMATCH] = "the source record at that offset is not the one that was decided"
    else:
        view[FETCHED_ORIGINAL] = base64.b64encode(raw).decode()
