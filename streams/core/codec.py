"""Decoding input bytes into validated events. Nothing raises: bad input becomes `Malformed`."""

from __future__ import annotations

import io
from collections.abc import Container
from typing import Any

import fastavro
from pydantic import ValidationError

from streams.core.models import Envelope, Event, Malformed

CONFLUENT_MAGIC = 0


def _error_summary(exc: ValidationError) -> str:
    """A short, payload-free description of a validation error (field paths and kinds only)."""
    parts = [".".join(str(p) for p in err["loc"]) + ":" + err["type"] for err in exc.errors()]
    return "invalid event: " + ", ".join(parts[:5])


def event_from_object(obj: Any, raw: bytes) -> Event | Malformed:
    """Validate a decoded object as an `Event`."""
    if not isinstance(obj, dict):
        return Malformed(raw, "event is not a JSON object")
    try:
        return Event.model_validate(obj)
    except ValidationError as exc:
        return Malformed(raw, _error_summary(exc))


def decode_json(raw: bytes | None) -> Event | Malformed:
    """Decode one JSON event (parsed and validated in one pass by pydantic-core)."""
    if not raw:
        return Malformed(raw or b"", "empty record")
    try:
        return Event.model_validate_json(raw)
    except ValidationError as exc:
        kinds = {err["type"] for err in exc.errors()}
        if "json_invalid" in kinds:
            return Malformed(raw, "not valid JSON")
        if "model_type" in kinds:
            return Malformed(raw, "event is not a JSON object")
        return Malformed(raw, _error_summary(exc))


def decode_json_gated(raw: bytes | None, receivable: Container[str]) -> Event | Envelope | Malformed:
    """Decode one JSON event, validating it in full only when some rule can receive its type.

    The envelope read still parses the whole document (invalid JSON is malformed either way);
    an event whose type no rule can receive comes back as its `Envelope`, which `decide`
    blocks for every partner as `event_type_not_allowed` whatever the rest holds. Replay
    decodes blocked records of format v2 the same way, so decisions reproduce exactly.
    """
    if not raw:
        return Malformed(raw or b"", "empty record")
    try:
        envelope = Envelope.model_validate_json(raw)
    except ValidationError:
        return decode_json(raw)  # the full decoder says what is wrong
    return decode_json(raw) if envelope.event_type in receivable else envelope


def drop_nulls(value: Any) -> Any:
    """Remove null members recursively (Avro optional fields decode as None)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def decode_avro(raw: bytes | None, schema: Any, confluent_framing: bool = True) -> Event | Malformed:
    """Decode one Avro event, by default in the Confluent wire format (magic 0, 4-byte id)."""
    if not raw:
        return Malformed(raw or b"", "empty record")
    body = raw
    if confluent_framing:
        if len(raw) < 5 or raw[0] != CONFLUENT_MAGIC:
            return Malformed(raw, "not Confluent Avro framing")
        body = raw[5:]
    try:
        obj = fastavro.schemaless_reader(io.BytesIO(body), schema, None)
    except Exception:  # fastavro raises many types on corrupt input
        return Malformed(raw, "not valid Avro for the event schema")
    return event_from_object(drop_nulls(obj), raw)


def encode_avro(event: dict[str, Any], schema: Any, schema_id: int = 1) -> bytes:
    """Encode an event in the Confluent wire format (used by tests, the demo and benchmarks)."""
    buf = io.BytesIO()
    buf.write(bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, schema, event)
    return buf.getvalue()
