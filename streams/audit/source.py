"""Reading blocked records: from the blocked topic (filtered) or from an exported JSON Lines file.

Both formats are read: each record is split into one view per (input, partner)
(`partner_views`), which is what filters, replay, reports and exports work on.

Time filters work on brokers that cannot look offsets up by time: the reader starts at the
beginning and filters on each record's timestamp (when it was withheld).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.runtime.records import partner_views


@dataclass(frozen=True)
class BlockedFilter:
    """Which blocked records to look at."""

    since_ms: int | None = None
    until_ms: int | None = None
    partner: str | None = None
    reason: str | None = None
    rule_id: str | None = None

    def accepts(self, blocked: dict[str, Any]) -> bool:
        """True when the record passes every filter."""
        stamp = blocked.get("_timestamp_ms")
        if self.since_ms is not None and (stamp is None or stamp < self.since_ms):
            return False
        if self.until_ms is not None and (stamp is None or stamp >= self.until_ms):
            return False
        if self.partner and blocked.get("partner") != self.partner:
            return False
        if self.reason and self.reason not in blocked.get("reasons", ()):
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


def read_topic(
    kafka_config: dict[str, Any], topic: str, wanted: BlockedFilter, idle_s: float = 2.0
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
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        last_seen = time.monotonic()
        while time.monotonic() - last_seen < idle_s:
            batch = consumer.consume(5000, 0.3)
            if batch:
                last_seen = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    continue
                try:
                    blocked = orjson.loads(message.value() or b"")
                except orjson.JSONDecodeError:
                    continue
                kind, stamp = message.timestamp()
                for view in partner_views(blocked):
                    view["_timestamp_ms"] = stamp if kind else None
                    view["_offset"] = message.offset()
                    if wanted.accepts(view):
                        yield view
    finally:
        consumer.close()


def read_file(path: Path, wanted: BlockedFilter) -> Iterator[dict[str, Any]]:
    """Blocked records from an exported JSON Lines file."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield from (view for view in partner_views(orjson.loads(line)) if wanted.accepts(view))


def export(records: Iterator[dict[str, Any]], path: Path) -> int:
    """Write blocked records as JSON Lines; returns the count."""
    count = 0
    with path.open("wb") as handle:
        for blocked in records:
            handle.write(orjson.dumps(blocked) + b"\n")
            count += 1
    return count


SOURCE_EXPIRED = "_source_expired"  # view member: the referenced source record is gone
SOURCE_MISMATCH = "_source_mismatch"  # view member: what the source holds is not what was decided


def resolve_references(
    views: list[dict[str, Any]], kafka_config: dict[str, Any], idle_s: float = 5.0
) -> None:
    """Fetch the originals of `reference`-mode views from their source topics, in place.

    A fetched record whose SHA-256 and size match the reference becomes the view's
    `original_b64` (replay then verifies it like a copy); a record retention has dropped
    marks the view `source_expired`; different bytes at that offset mark it a mismatch.
    Each source partition is read once, from the lowest wanted offset to the highest.
    """
    wanted: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = {}
    for view in views:
        source = view.get("source") or {}
        if view.get("payload_mode") != "reference" or view.get("original_b64") is not None:
            continue
        topic, partition, offset = source.get("topic"), source.get("partition"), source.get("offset")
        if not isinstance(topic, str) or not isinstance(partition, int) or not isinstance(offset, int):
            view[SOURCE_MISMATCH] = "reference without a valid source position"
            continue
        wanted.setdefault((topic, partition), {}).setdefault(offset, []).append(view)
    if not wanted:
        return
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"partner-guard-sources-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        for (topic, partition), by_offset in wanted.items():
            found = _read_offsets(consumer, topic, partition, set(by_offset), idle_s)
            for offset, offset_views in by_offset.items():
                raw = found.get(offset)
                for view in offset_views:
                    _resolve(view, raw)
    finally:
        consumer.close()


def _read_offsets(
    consumer: Consumer, topic: str, partition: int, offsets: set[int], idle_s: float
) -> dict[int, bytes]:
    """The wanted records of one partition, read from the lowest wanted offset to the end.

    Only offsets below the low watermark are known gone up front: the embedded broker's
    high watermark can trail the true end (see `state_reader`), so the end is found by reading.
    """
    try:
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    except KafkaException:
        return {}  # no such topic or partition any more: every reference to it has expired
    remaining = {o for o in offsets if o >= low}
    found: dict[int, bytes] = {}
    if not remaining:
        return found
    consumer.assign([TopicPartition(topic, partition, min(remaining))])
    idle_since = time.monotonic()
    at_end = False
    while remaining and not at_end and time.monotonic() - idle_since < idle_s:
        batch = consumer.consume(5000, 0.3)
        if batch:
            idle_since = time.monotonic()
        for message in batch:
            error = message.error()
            if error is not None:
                at_end = at_end or error.code() == KafkaError._PARTITION_EOF
            elif (offset := message.offset()) is not None and offset in remaining:
                found[offset] = message.value() or b""
                remaining.discard(offset)
    consumer.unassign()
    return found


def _resolve(view: dict[str, Any], raw: bytes | None) -> None:
    if raw is None:
        view[SOURCE_EXPIRED] = True
    elif hashlib.sha256(raw).hexdigest() != view.get("original_sha256") or len(raw) != view.get(
        "original_size"
    ):
        view[SOURCE_MISMATCH] = "the source record at that offset is not the one that was decided"
    else:
        view["original_b64"] = base64.b64encode(raw).decode()
