"""Decoding input bytes into validated events. Nothing raises: bad input becomes `Malformed`.

JSON is parsed strictly, the way no two parsers can read differently: a duplicate key in
any object, `NaN`/`Infinity`, nesting deeper than 200 levels or a number of more than 4,300
digits is malformed (jiter refuses them while parsing, before anything is built); then the
event model checks types strictly (no boolean for a number or time).
"""

from __future__ import annotations

import io
import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, TypeVar

import fastavro
import jiter
from fastavro.read import SchemaResolutionError
from pydantic import BaseModel, ValidationError

from streams.core.models import MAX_ID_CHARS, Envelope, Event, Malformed, assemble
from streams.core.reasons import Reason

CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_BYTES = 5  # magic byte + 4-byte schema id
_Model = TypeVar("_Model", bound=BaseModel)
# What `Envelope` accepts as `event_id` (`InternalId`); checked here without building a
# validator's input for the two thirds of traffic read only this far.
_INTERNAL_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_CHARS}}}")


def parse_strict_json(raw: bytes) -> Any:
    """Parse JSON, refusing duplicate keys and non-finite literals; raises `ValueError`."""
    return jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False, cache_mode="keys")


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


def _parse_record(raw: bytes | None) -> Any:
    """The record's JSON document, strictly parsed, or the `Malformed` saying why there is none
    (a parsed document is plain JSON values, never a `Malformed`)."""
    if not raw:
        return Malformed(raw or b"", "empty record")
    try:
        return parse_strict_json(raw)
    except ValueError as exc:
        return Malformed(raw, _json_error(exc))
    except Exception as exc:  # defensive: the parser is native code
        return Malformed(raw, f"not valid JSON: {type(exc).__name__}")


def decode_json(raw: bytes | None) -> Event | Malformed:
    """Decode one JSON event: strict parse (duplicate keys refused), then strict validation."""
    obj = _parse_record(raw)
    if isinstance(obj, Malformed):
        return obj
    return event_from_object(obj, raw or b"")


def decode_state_record(raw: bytes, model: type[_Model]) -> _Model:
    """Strictly decode one state record (consent or sign-up status); raises `ValueError`."""
    return model.model_validate(parse_strict_json(raw))


def decode_json_gated(raw: bytes | None, receivable: Container[str]) -> Event | Envelope | Malformed:
    """Decode one JSON event, validating it in full only when some rule can receive its type.

    The document is parsed as strictly as by `decode_json` (invalid JSON or a duplicate key is
    malformed either way); an event whose type no rule can receive comes back as its
    `Envelope`, which `decide` blocks for every partner as `event_type_not_allowed` whatever
    the rest holds. Replay decodes blocked records of format v2 the same way, so decisions
    reproduce exactly.
    """
    obj = _parse_record(raw)
    if isinstance(obj, Malformed):
        return obj
    event_type = obj.get("event_type") if isinstance(obj, dict) else None
    if isinstance(event_type, str) and event_type not in receivable:
        event_id = obj.get("event_id")
        if (
            type(event_id) is str
            and type(event_type) is str
            and event_type
            and _INTERNAL_ID.fullmatch(event_id)
        ):
            return assemble(
                Envelope, {"event_id": event_id, "event_type": event_type}
            )  # what validation gives
        try:
            return Envelope.model_validate({"event_id": obj.get("event_id"), "event_type": event_type})
        except ValidationError:
            pass  # the full validation below says what is wrong
    return event_from_object(obj, raw or b"")


def drop_nulls(value: Any) -> Any:
    """Remove null members recursively (Avro optional fields decode as None)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ConfluentFrame:
    """An Avro record in the Confluent wire format: magic byte 0, 4-byte big-endian id, body."""

    schema_id: int
    body: bytes


def split_confluent_frame(raw: bytes | None) -> ConfluentFrame | Malformed:
    """Split the Confluent framing off a record, or say why it is not framed."""
    if not raw:
        return Malformed(raw or b"", "empty record")
    if len(raw) < CONFLUENT_HEADER_BYTES or raw[0] != CONFLUENT_MAGIC:
        return Malformed(raw, "not Confluent Avro framing")
    return ConfluentFrame(int.from_bytes(raw[1:CONFLUENT_HEADER_BYTES], "big"), raw[CONFLUENT_HEADER_BYTES:])


def decode_avro_body(raw: bytes, body: bytes, writer_schema: Any, reader_schema: Any) -> Event | Malformed:
    """Decode an Avro body written under `writer_schema` into `reader_schema` (Avro resolution).

    The body must be consumed exactly: trailing bytes make the record malformed, so two
    records glued together, or a body written under a longer schema, never decode.
    A value the resolution rules cannot map (a field removed without a default, a type
    changed) is `schema_incompatible`.
    """
    buffer = io.BytesIO(body)
    try:
        obj = fastavro.schemaless_reader(buffer, writer_schema, reader_schema)
    except SchemaResolutionError:
        return Malformed(raw, "writer schema cannot be read as the event schema", Reason.SCHEMA_INCOMPATIBLE)
    except Exception:  # fastavro raises many types on corrupt input
        return Malformed(raw, "not valid Avro for the event schema")
    if buffer.tell() != len(body):
        return Malformed(raw, f"Avro body has {len(body) - buffer.tell()} trailing byte(s)")
    return event_from_object(drop_nulls(obj), raw)


def decode_avro(raw: bytes | None, schema: Any, confluent_framing: bool = True) -> Event | Malformed:
    """Decode one Avro event written under `schema` itself (by default Confluent-framed).

    The framing's schema id is not looked at here: the shell checks it (registry, or the
    pinned writer schema) before calling this, see `streams.runtime.kafka.avro_input`.
    """
    if not raw:
        return Malformed(raw or b"", "empty record")
    body = raw
    if confluent_framing:
        frame = split_confluent_frame(raw)
        if isinstance(frame, Malformed):
            return frame
        body = frame.body
    return decode_avro_body(raw, body, schema, None)


def encode_avro(event: dict[str, Any], schema: Any, schema_id: int = 1, strict: bool = False) -> bytes:
    """Encode an event in the Confluent wire format (tests, the demo, benchmarks, `produce --avro`).

    `strict`: a member the schema does not have is an error (`ValueError`), not silently left
    out; a missing member with a default takes the default.
    """
    buf = io.BytesIO()
    buf.write(bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, schema, event, strict_allow_default=strict)
    return buf.getvalue()
