"""`partner-guard produce`: send JSON Lines to a topic, as `kcat -P` does.

Each non-empty line is one record. In JSON mode the line's bytes are the value, unchanged
(so a malformed line can be sent on purpose, to see the guard block it); `--key-path` reads
the key from the line, `--header k=v` adds headers, `--avro` encodes the line as an event of
the guard's Avro schema in the Confluent wire format, with the schema id from the Schema
Registry (`schema_registry_url`, subject `<topic>-value`) or the pinned `avro_schema_id`.
The Kafka connection is `run`'s: the same settings, the same librdkafka passthrough.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from streams.core.codec import encode_avro
from streams.core.errors import RefusalError
from streams.core.schema import event_schema, event_schema_text
from streams.runtime.config import Settings, did_you_mean
from streams.runtime.kafka.io import Headers, produce

FLUSH_TIMEOUT_S = 60.0
METADATA_TIMEOUT_S = 15.0
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class ProduceError(RefusalError):
    """Input or settings `produce` cannot send; the message names the line or setting."""


@dataclass(frozen=True)
class KeyPath:
    """A JSON path to the record key: `account_id`, `$.device.device_id`, `items[0].id`."""

    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> KeyPath:
        """Parse a path of names and `[index]` steps, with or without a leading `$`."""
        body = text.removeprefix("$")
        steps: list[str | int] = []
        position = 0
        while position < len(body):
            match = _STEP.match(body, position)
            if match is None or match.end() == position:
                raise ProduceError(
                    f"--key-path {text!r}: expected names and [index] steps, e.g. $.device.device_id"
                )
            name, index = match.groups()
            steps.append(int(index) if index is not None else name)
            position = match.end()
        if not steps:
            raise ProduceError(f"--key-path {text!r}: empty path; e.g. --key-path account_id")
        return cls(text, tuple(steps))

    def find(self, document: Any) -> Any:
        """The value at the path, or None when any step is missing."""
        for step in self.steps:
            if isinstance(step, int):
                if not (isinstance(document, list) and step < len(document)):
                    return None
                document = document[step]
            elif isinstance(document, dict) and step in document:
                document = document[step]
            else:
                return None
        return document


def key_bytes(value: Any) -> bytes | None:
    """A key value as bytes: a string as UTF-8, anything else as compact JSON; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def parse_header(text: str) -> tuple[str, bytes]:
    """`name=value` (the value may contain `=`; may be empty)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ProduceError(f"--header {text!r}: expected NAME=VALUE, e.g. --header source=backfill")
    return name, value.encode()


@dataclass
class ProduceResult:
    """What was sent: records, records without a key (with --key-path), delivery failures."""

    sent: int = 0
    without_key: int = 0
    failed: list[str] = field(default_factory=list)


def avro_schema_id(settings: Settings, topic: str) -> int:
    """The writer schema id to frame records with: the registry's id for the guard's event
    schema under `<topic>-value` (registered when it is not there yet), else the pinned id."""
    if settings.schema_registry_url:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        from streams.runtime.kafka.avro_input import registry_client

        client = registry_client(settings.registry_config())
        schema = Schema(event_schema_text(), "AVRO")
        subject = f"{topic}-value"
        try:
            try:
                return int(client.lookup_schema(subject, schema).schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise
                return int(client.register_schema(subject, schema))
        except SchemaRegistryError as exc:
            raise ProduceError(
                f"Schema Registry {settings.schema_registry_url}, subject {subject}: HTTP "
                f"{exc.http_status_code}: {exc.error_message}"
            ) from None
        except Exception as exc:  # connection refused, TLS, timeouts
            raise ProduceError(
                f"Schema Registry {settings.schema_registry_url} did not answer ({type(exc).__name__})"
            ) from None
    if settings.avro_schema_id is not None:
        return settings.avro_schema_id
    raise ProduceError(
        "--avro needs schema_registry_url (PARTNER_GUARD_SCHEMA_REGISTRY_URL) or the pinned "
        "avro_schema_id (PARTNER_GUARD_AVRO_SCHEMA_ID), as `run` reads Avro input"
    )


def _require_topic(producer: Producer, topic: str, bootstrap: str) -> None:
    """Refuse a topic the broker does not have (a typo would otherwise wait for delivery
    timeouts, or create a topic where the broker creates them on first use)."""
    try:
        topics = producer.list_topics(timeout=METADATA_TIMEOUT_S).topics
    except KafkaException as exc:
        raise ProduceError(f"cannot reach bootstrap {bootstrap} ({exc.args[0]})") from None
    if topic not in topics:
        known = sorted(t for t in topics if not t.startswith("__"))
        raise ProduceError(
            f"no topic {topic!r} on the broker{did_you_mean(topic, known)}; create it first "
            "(`partner-guard run --create-topics` creates the guard's own)"
        )


def numbered_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Non-empty lines, without their line ends, with their 1-based line numbers."""
    for number, line in enumerate(lines, start=1):
        stripped = line.rstrip(b"\r\n")
        if stripped.strip():
            yield number, stripped


def record_of(
    line: bytes, where: str, key_path: KeyPath | None, schema_id: int | None
) -> tuple[bytes | None, bytes, bool]:
    """Key, value and whether a key was wanted but missing, for one input line."""
    if key_path is None and schema_id is None:
        return None, line, False
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProduceError(
            f"{where}: not JSON ({exc}); --key-path and --avro read every line as JSON"
        ) from None
    key = key_bytes(key_path.find(document)) if key_path is not None else None
    value = line
    if schema_id is not None:
        if not isinstance(document, dict):
            raise ProduceError(f"{where}: --avro needs a JSON object (an event)")
        try:
            value = encode_avro(document, event_schema(), schema_id, strict=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProduceError(f"{where}: not an event of the guard's Avro schema: {exc}") from None
    return key, value, key_path is not None and key is None


def produce_lines(
    settings: Settings,
    topic: str,
    lines: Iterable[bytes],
    source: str,
    key_path: KeyPath | None = None,
    headers: Headers | None = None,
    avro: bool = False,
) -> ProduceResult:
    """Send every line; stop at the first line that cannot be sent (what came before is sent)."""
    schema_id = avro_schema_id(settings, topic) if avro else None
    result = ProduceResult()

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            result.failed.append(str(error))

    producer = Producer(
        {**settings.kafka_base(), "enable.idempotence": True, "linger.ms": 5, "on_delivery": delivered}
    )
    _require_topic(producer, topic, settings.bootstrap_servers)
    try:
        for number, line in numbered_lines(lines):
            try:
                key, value, missing = record_of(line, f"{source}:{number}", key_path, schema_id)
            except ProduceError as exc:
                raise ProduceError(f"{exc} ({result.sent} record(s) before it sent)") from None
            try:
                produce(producer, topic, value, key, list(headers or []) or None)
            except KafkaException as exc:  # refused before sending: too large, a bad header, ...
                error = exc.args[0].str() if hasattr(exc.args[0], "str") else str(exc)
                raise ProduceError(
                    f"{source}:{number}: the Kafka client refused the record ({error}); "
                    f"{result.sent} record(s) before it sent"
                ) from None
            result.sent += 1
            result.without_key += missing
            producer.poll(0)
    finally:
        remaining = producer.flush(FLUSH_TIMEOUT_S)
        if remaining:
            result.failed.append(f"{remaining} record(s) not delivered within {FLUSH_TIMEOUT_S:.0f} s")
    return result
