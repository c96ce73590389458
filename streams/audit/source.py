"""Reading blocked records: from the blocked topic (filtered) or from an exported JSON Lines file.

Time filters work on brokers that cannot look offsets up by time: the reader starts at the
beginning and filters on each record's timestamp (when it was withheld).

Whatever is in the topic or file is passed on, never dropped: bytes that are not a JSON
object come out as `{"_invalid": why, ...where it was read}`, which replay reports as an
`invalid_record`, whatever the partner, reason or rule filters (only time filters apply).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition


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
                kind, stamp = message.timestamp()
                where = {"_timestamp_ms": stamp if kind else None, "_partition": message.partition()}
                where["_offset"] = message.offset()
                blocked = _parse(message.value() or b"", where)
                if wanted.accepts(blocked):
                    yield blocked
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
                blocked = _parse(line, {"_line": number})
                if wanted.accepts(blocked):
                    yield blocked


def export(records: Iterator[dict[str, Any]], path: Path) -> int:
    """Write blocked records as JSON Lines; returns the count."""
    count = 0
    with path.open("wb") as handle:
        for blocked in records:
            handle.write(orjson.dumps(blocked) + b"\n")
            count += 1
    return count
