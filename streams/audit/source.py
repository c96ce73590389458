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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

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


# The largest partition and offset Kafka can name: a reference past them names nothing.
MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**63 - 1


@dataclass
class Sources:
    """What the source topics hold at wanted positions, and why each other position has nothing.

    `values`: the record at each position read (None for a record without a value).
    `absent`: every other position, with None when it lies below its partition's log start
    (retention or deletion dropped it: the only way a real reference loses its record), or
    with why it never named a record (no such topic or partition, past the end, no committed
    record at that offset).
    """

    values: dict[tuple[str, int, int], bytes | None] = field(default_factory=dict)
    absent: dict[tuple[str, int, int], str | None] = field(default_factory=dict)


def absent_because(offset: int, low: int, high: int) -> str | None:
    """Why a partition with log start `low` and end `high` has no record at `offset`: None
    when it lies below the log start (expired), else why no record was ever there."""
    if offset < low:
        return None
    if offset >= high:
        return f"offset {offset} is past the end of the partition ({high}): it never held that record"
    return f"no committed record at offset {offset} (log start {low}, end {high})"


def fetch_records(
    kafka_config: dict[str, Any], wanted: set[tuple[str, int, int]]
) -> dict[tuple[str, int, int], bytes | None]:
    """The values at exact (topic, partition, offset) positions, read_committed.

    Positions that do not exist (any more, or not yet) are missing from the answer.
    """
    return fetch_sources(kafka_config, wanted).values


def fetch_sources(kafka_config: dict[str, Any], wanted: set[tuple[str, int, int]]) -> Sources:
    """Read the records at exact (topic, partition, offset) positions, read_committed, and say
    of every position with no record whether it expired or never existed (`Sources`)."""
    by_partition: dict[tuple[str, int], set[int]] = {}
    for topic, partition, offset in wanted:
        by_partition.setdefault((topic, partition), set()).add(offset)
    sources = Sources()
    if not by_partition:
        return sources
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"partner-guard-fetch-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",  # a position past the end yields nothing, not the start
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        listed = {t: m.partitions for t, m in metadata.topics.items() if m.error is None}
        bounds: dict[tuple[str, int], tuple[int, int]] = {}
        for (topic, partition), offsets in by_partition.items():
            if topic not in listed:
                _check_missing(consumer, topic)
                why = f"source topic '{topic}' does not exist"
            elif partition not in listed[topic]:
                why = f"source topic '{topic}' has no partition {partition} (it has {len(listed[topic])})"
            else:
                tp = TopicPartition(topic, partition)
                bounds[(topic, partition)] = consumer.get_watermark_offsets(tp, timeout=10)
                continue
            sources.absent.update({(topic, partition, o): why for o in offsets})
        partitions, stop_at = [], {}
        for key, (low, high) in bounds.items():
            # Read from the first wanted offset at or above the log start (one below it would
            # reset the consumer past the others), and never from past the end (nothing would
            # be fetched and the position never reach it): then from the last record, which
            # also drains a last batch the broker counts short (see `read_to_end`).
            readable = [o for o in by_partition[key] if o >= low]
            if readable and high > low:
                partitions.append(TopicPartition(*key, min(min(readable), high - 1)))
                stop_at[key] = max(readable) + 1
        for message in read_to_end(consumer, partitions, stop_at=stop_at) if partitions else ():
            at_topic, at_partition, at = message.topic(), message.partition(), message.offset()
            if at_topic is None or at_partition is None or at is None:
                continue
            if at in by_partition.get((at_topic, at_partition), ()):
                sources.values[(at_topic, at_partition, at)] = message.value()
        for (topic, partition), (low, high) in bounds.items():
            for offset in by_partition[(topic, partition)]:
                if (topic, partition, offset) not in sources.values:
                    sources.absent[(topic, partition, offset)] = absent_because(offset, low, high)
    finally:
        consumer.close()
    return sources


def _check_missing(consumer: Consumer, topic: str) -> None:
    """Raise `RuntimeError` (replay cannot run) unless the broker says `topic` does not exist:
    a topic this client may not describe is not a reference to nothing."""
    described = consumer.list_topics(topic, timeout=10).topics.get(topic)
    error = described.error if described is not None else None
    if error is not None and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise RuntimeError(f"cannot read source topic '{topic}': {error.str()}")


SOURCE_EXPIRED = "_source_expired"  # view member: the referenced source record is gone
SOURCE_MISMATCH = "_source_mismatch"  # view member: what the source holds is not what was decided
SOURCE_INVALID = "_source_invalid"  # view member: the reference names no record the topic ever held


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
    (`FETCHED_ORIGINAL`; replay then verifies it like a copy); different bytes at that
    offset mark it a mismatch. A position below its partition's log start (retention
    dropped the record) marks the view `source_expired`; any other position without a
    record (a topic or partition that does not exist, an offset past the end or one that
    holds no committed record) marks it invalid (`SOURCE_INVALID`): the guard never wrote
    such a reference.
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
        elif not (0 <= position[1] <= MAX_PARTITION and 0 <= position[2] <= MAX_OFFSET):
            view[SOURCE_INVALID] = f"partition {position[1]}, offset {position[2]} is no position in a topic"
        else:
            wanted.setdefault(position, []).append(view)
    sources = fetch_sources(kafka_config, set(wanted)) if wanted else Sources()
    for position, referring in wanted.items():
        for view in referring:
            if position in sources.values:
                _resolve(view, sources.values[position] or b"")
            elif (why := sources.absent.get(position)) is not None:
                view[SOURCE_INVALID] = f"{position[0]}[{position[1]}]@{position[2]}: {why}"
            else:
                view[SOURCE_EXPIRED] = True


def _resolve(view: dict[str, Any], raw: bytes) -> None:
    if hashlib.sha256(raw).hexdigest() != view.get("original_sha256") or len(raw) != view.get(
        "original_size"
    ):
        view[SOURCE_MISMATCH] = "the source record at that offset is not the one that was decided"
    else:
        view[FETCHED_ORIGINAL] = base64.b64encode(raw).decode()
