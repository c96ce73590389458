"""Decoding input bytes into validated events. Nothing raises: bad input becomes `Malformed`.

JSON is parsed strictly, the way no two parsers can read differently: a duplicate key in
any object, `NaN`/`Infinity`, nesting deeper than 200 levels or a number of more than 4,300
digits is malformed (jiter refuses them while parsing, before anything is built); then the
event model checks types strictly (no boolean for a number or time).
"""

from __future__ import annotations

import io
from typing import Any, TypeVar

import fastavro
import jiter
from pydantic import BaseModel, ValidationError

from streams.core.models import Event, Malformed

CONFLUENT_MAGIC = 0
_Model = TypeVar("_Model", bound=BaseModel)


def parse_strict_json(raw: bytes) -> Any:
    """Parse JSON, refusing duplicate keys and non-finite literals; raises `ValueError`."""
    return jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False)


def _json_error(exc: ValueError) -> str:
    """A payload-free description of a JSON parse error (jiter's message names the key)."""
    return "duplicate key in a JSON object" if "duplicate key" in str(exc) else "not valid JSON"


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
    except Exception as exc:  # no input may raise past the codec, whatever a validator does
        return Malformed(raw, f"invalid event: {type(exc).__name__}")


def decode_json(raw: bytes | None) -> Event | Malformed:
    """Decode one JSON event: strict parse (duplicate keys refused), then strict validation."""
    if not raw:
        return Malformed(raw or b"", "empty record")
    try:
        obj = parse_strict_json(raw)
    except ValueError as exc:
        return Malformed(raw, _json_error(exc))
    except Exception as exc:  # defensive: the parser is native code
        return Malformed(raw, f"not valid JSON: {type(exc).__name__}")
    return event_from_object(obj, raw)


def decode_state_record(raw: bytes, model: type[_Model]) -> _Model:
    """Strictly decode one state record (consent or sign-up status); raises `ValueError`."""
    return model.model_validate(parse_strict_json(raw))


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
