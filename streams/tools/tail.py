"""`partner-guard tail`: read a topic and show each record decoded, as `kcat -C` does.

Records the guard writes are recognised by their content: a blocked record (format v1 or
v2) shows its event id, source position and every partner's reasons; another record with a
`partner-guard.*` format (an opt-out notice) its format and members; a partner record or
any other JSON its JSON; an Avro record in the Confluent wire format the event it holds
(writer schema from the registry or the pinned id, as `run` reads it); anything else its
size and first bytes. The human form never prints a blocked record's original; `--json`
prints each record in full, one JSON document a line.

The read is `read_committed` with no consumer group (nothing is committed): from the
beginning or from the end; it stops at the end offsets listed when it starts, unless it
follows (`--follow`), or after `--count N` records.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    IsolationLevel,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from streams.core.codec import CONFLUENT_HEADER_BYTES, CONFLUENT_MAGIC
from streams.core.errors import RefusalError
from streams.core.models import Malformed
from streams.runtime.config import Settings, did_you_mean
from streams.runtime.formats.records import BLOCKED_FORMAT, BLOCKED_FORMAT_V1, partner_views
from streams.runtime.kafka.avro_input import AvroDecoder

METADATA_TIMEOUT_S = 15.0
# Without --follow: an end held back by a transaction still open is waited for this long
# after the last new record.
IDLE_S = 3.0
SHOWN_BYTES = 64


class TailError(RefusalError):
    """A topic `tail` cannot read; the message names it."""


@dataclass(frozen=True)
class Shown:
    """One record as `tail` shows it: its kind and its decoded value."""

    kind: str  # blocked.v1 | blocked.v2 | notice | json | avro | bytes | tombstone
    value: Any
    summary: str


def _json_summary(document: Any) -> str:
    return orjson.dumps(document).decode()


def _blocked_summary(document: dict[str, Any]) -> str:
    source = document.get("source") if isinstance(document.get("source"), dict) else {}
    where = f"{source.get('topic')}[{source.get('partition')}]@{source.get('offset')}" if source else "?"
    partners = "; ".join(
        f"{view.get('partner')}: {','.join(str(r) for r in view.get('reasons') or [])}"
        for view in partner_views(document)
    )
    return f"event {document.get('event_id')} from {where} withheld from {partners}"


def describe(value: bytes | None, avro: AvroDecoder | None = None) -> Shown:
    """Decode one record value for display."""
    if value is None:
        return Shown("tombstone", None, "tombstone (null value)")
    if value[:1] == bytes([CONFLUENT_MAGIC]) and len(value) >= CONFLUENT_HEADER_BYTES:
        schema_id = int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")
        if avro is not None:
            decoded = avro.decode(value)
            if not isinstance(decoded, Malformed):
                document = decoded.model_dump(mode="json", exclude_none=True)
                return Shown("avro", document, f"avro (schema id {schema_id}) {_json_summary(document)}")
        return Shown("avro", None, f"avro (schema id {schema_id}, {len(value)} bytes; not decoded)")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        head = value[:SHOWN_BYTES].decode("utf-8", "backslashreplace")
        return Shown("bytes", base64.b64encode(value).decode(), f"{len(value)} bytes, not JSON: {head!r}")
    fmt = document.get("format") if isinstance(document, dict) else None
    if fmt in (BLOCKED_FORMAT, BLOCKED_FORMAT_V1):
        kind = "blocked.v2" if fmt == BLOCKED_FORMAT else "blocked.v1"
        return Shown(kind, document, f"{kind} {_blocked_summary(document)}")
    if isinstance(fmt, str) and fmt.startswith("partner-guard."):
        return Shown("notice", document, f"{fmt} {_json_summary(document)}")
    return Shown("json", document, _json_summary(document))


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode()


def render(message: Message, shown: Shown, as_json: bool) -> str:
    """One output line for a record: human (`topic[p]@offset time key=... summary`) or JSON."""
    _kind, stamp = message.timestamp()
    key = _key_text(message.key())
    if as_json:
        raw_headers = message.headers() or []
        headers = [
            [name, value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value]
            for name, value in (raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)
        ]
        document = {
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": stamp,
            "key": key,
            "headers": headers,
            "kind": shown.kind,
            "value": shown.value,
        }
        return orjson.dumps(document).decode()
    when = datetime.fromtimestamp(stamp / 1000, UTC).isoformat(timespec="milliseconds") if stamp > 0 else "-"
    keyed = f" key={key}" if key is not None else ""
    line = f"{message.topic()}[{message.partition()}]@{message.offset()} {when}{keyed} {shown.summary}"
    return printable(line)


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape sequences, line breaks,
    bidirectional overrides) written as its escape: a record's key or id is input, and
    must not be able to rewrite the operator's screen or forge a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _partitions(consumer: Consumer, topic: str, bootstrap: str) -> list[int]:
    try:
        metadata = consumer.list_topics(timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise TailError(f"cannot reach bootstrap {bootstrap} ({exc.args[0]})") from None
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        known = sorted(t for t in metadata.topics if not t.startswith("__"))
        raise TailError(f"no topic {topic!r} on the broker{did_you_mean(topic, known)}")
    return sorted(metadata.topics[topic].partitions)


def _end_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """End offsets as listed now (read_uncommitted: an open transaction's end counts too)."""
    admin = AdminClient(settings.kafka_base())
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}  # type: ignore[no-untyped-call]
    futures = admin.list_offsets(
        request, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=METADATA_TIMEOUT_S
    )
    return {tp.partition: max(0, future.result().offset) for tp, future in futures.items()}


def read(
    settings: Settings,
    topic: str,
    from_beginning: bool,
    follow: bool,
    count: int | None,
    on_error: Callable[[str], None] = lambda _text: None,
) -> Iterator[Message]:
    """The records of `topic`, as asked; a consumer error is passed to `on_error`, not raised."""
    consumer = Consumer(
        {
            **settings.kafka_base(),
            "group.id": f"partner-guard-tail-{uuid.uuid4().hex}",  # never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = _partitions(consumer, topic, settings.bootstrap_servers)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        pending: dict[int, int] = {}
        if not follow:
            ends = _end_offsets(settings, topic, partitions)
            pending = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        shown = 0
        last_new = time.monotonic()
        while count is None or shown < count:
            if not follow and (not pending or time.monotonic() - last_new > IDLE_S):
                break
            batch = consumer.consume(500, 0.2)
            for message in batch:
                if message.error() is not None:
                    on_error(str(message.error()))
                    continue
                yield message
                shown += 1
                if count is not None and shown >= count:
                    return
            if batch:
                last_new = time.monotonic()
            if pending:
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= pending[tp.partition]:
                        del pending[tp.partition]
        if not follow and not pending:  # the rest of the last record batches, already fetched
            while batch := consumer.consume(500, 0):
                for message in batch:
                    if message.error() is None:
                        yield message
                        shown += 1
                        if count is not None and shown >= count:
                            return
    finally:
        consumer.close()
