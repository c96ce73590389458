"""Avro input: find each record's writer schema, then decode it into the guard's event schema.

Records arrive in the Confluent wire format (magic byte 0, a 4-byte schema id, the Avro
body). The id says which schema the producer wrote with; a body is only ever decoded with
that writer schema resolved against the guard's own (reader) schema, never by position
under ours. Two ways to learn the writer schema:

- **Schema Registry** (`schema_registry_url`): the id is looked up with confluent-kafka's
  `SchemaRegistryClient` and the parsed result cached per id. An id the registry does not
  know blocks as `schema_unknown`; a schema the guard cannot read (another record name, a
  field the guard needs removed without a default, not Avro) blocks as
  `schema_incompatible`. A registry that cannot be reached blocks the record as
  `schema_unknown` too (fail closed) and is asked again after `RETRY_AFTER_S`; an unknown
  id is asked about again after `UNKNOWN_RECHECK_S`.
- **Pinned** (no registry): the operator states the one id producers use
  (`avro_schema_id`) and the fingerprint of the schema behind it
  (`avro_schema_fingerprint`); start is refused when that fingerprint is not the guard's,
  and a record framed with any other id blocks as `schema_unknown`.

`decode_input` is the one way an input record is decoded by its topic's format: the job
calls it for every input, and replay and republish call it again for a blocked record's
original, with decoders built from the same settings (`ReplayAvro`), so an audit decodes
exactly as the job did — into the event schema of the ruleset that decided, which for a
record decided before a schema change is the schema of that commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.core.codec import decode_avro_body, decode_json, decode_json_gated, split_confluent_frame
from streams.core.models import Envelope, Event, Malformed
from streams.core.reasons import Reason
from streams.core.schema import load_schema_json, schema_fingerprint
from streams.runtime.config import Settings

log = logging.getLogger(__name__)

# A registry outage must not cost a network timeout per record: after a failed lookup the
# same id is blocked without asking again for this long.
RETRY_AFTER_S = 5.0
# An id the registry does not know may be registered later (replication between registry
# instances): it is asked about again after this long.
UNKNOWN_RECHECK_S = 60.0
# Bounds the cache of unknown ids a hostile producer could fill with made-up ids.
MAX_CACHED_UNKNOWN = 10_000


class SchemaLookupError(Exception):
    """The registry could not answer (network, auth, server error): not a verdict on the id."""


class NotAvroSchemaError(Exception):
    """The id names a schema of another type (Protobuf, JSON Schema)."""


def _full_name(schema: dict[str, Any], name: str | None = None) -> str:
    """A named type's full name: `namespace.name` unless the name is already dotted."""
    name = name or str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _fields_without_default(schema: dict[str, Any]) -> list[str]:
    return [f["name"] for f in schema.get("fields", []) if "default" not in f]


def incompatibility(writer: dict[str, Any], reader: dict[str, Any]) -> str | None:
    """Why `writer` records cannot be read as `reader` records, or None (checked up front).

    Avro resolution rules for the top-level record: same full name (or a reader alias),
    and every reader field without a default present in the writer. Type mismatches deeper
    down are caught per record by the decoder (`schema_incompatible` as well).
    """
    if writer.get("type") != "record":
        return "writer schema is not a record"
    reader_names = {_full_name(reader), *(_full_name(reader, alias) for alias in reader.get("aliases", []))}
    if _full_name(writer) not in reader_names:
        return f"writer record {_full_name(writer)!r} is not {_full_name(reader)!r}"
    writer_fields = {f["name"] for f in writer.get("fields", [])}
    missing = [name for name in _fields_without_default(reader) if name not in writer_fields]
    if missing:
        return f"writer schema lacks required field(s) {missing}"
    return None


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A usable writer schema, or the block it earns."""

    writer: Any | None
    reason: str | None = None
    detail: str = ""
    expires: float | None = None  # monotonic time after which a failed lookup is retried


class AvroDecoder:
    """Decodes Confluent-framed Avro records under their own writer schema, cached per id."""

    def __init__(
        self,
        lookup: Callable[[int], str | None],
        clock: Callable[[], float] = time.monotonic,
        reader_schema: Mapping[str, Any] | None = None,
    ):
        """`lookup(id)` returns the writer schema text or None when the id is unknown; it
        raises `NotAvroSchemaError` for another schema type, `SchemaLookupError` when it
        cannot tell. Records are read into `reader_schema` (default: the shipped event schema)."""
        self._lookup = lookup
        self._clock = clock
        self._reader_json = dict(reader_schema) if reader_schema is not None else load_schema_json()
        self._reader = fastavro.parse_schema(self._reader_json)
        self._by_id: dict[int, _Resolved] = {}

    def decode(self, raw: bytes | None) -> Event | Malformed:
        """Decode one record; never raises."""
        frame = split_confluent_frame(raw)
        if isinstance(frame, Malformed):
            return frame
        resolved = self._resolve(frame.schema_id)
        if resolved.writer is None:
            return Malformed(raw or b"", resolved.detail, resolved.reason or Reason.SCHEMA_UNKNOWN)
        return decode_avro_body(raw or b"", frame.body, resolved.writer, self._reader)

    def _resolve(self, schema_id: int) -> _Resolved:
        cached = self._by_id.get(schema_id)
        if cached is not None and (cached.expires is None or self._clock() < cached.expires):
            return cached
        resolved = self._fetch(schema_id)
        if resolved.writer is None and len(self._by_id) >= MAX_CACHED_UNKNOWN:
            return resolved  # answer, but do not let made-up ids grow the cache without bound
        self._by_id[schema_id] = resolved
        return resolved

    def _fetch(self, schema_id: int) -> _Resolved:
        try:
            text = self._lookup(schema_id)
        except SchemaLookupError as exc:
            log.warning("schema registry lookup of id %d failed: %s", schema_id, exc)
            return _Resolved(
                None,
                Reason.SCHEMA_UNKNOWN,
                f"schema id {schema_id}: registry unavailable",
                self._clock() + RETRY_AFTER_S,
            )
        except NotAvroSchemaError as exc:
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, f"schema id {schema_id} is {exc}, not Avro")
        if text is None:
            return _Resolved(
                None,
                Reason.SCHEMA_UNKNOWN,
                f"schema id {schema_id} is unknown",
                self._clock() + UNKNOWN_RECHECK_S,
            )
        try:
            writer_json = json.loads(text)
            writer = fastavro.parse_schema(writer_json)
        except Exception:  # the registry's text is input too: any parse failure is a verdict
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, f"schema id {schema_id} is not valid Avro")
        problem = incompatibility(writer_json, self._reader_json) if isinstance(writer_json, dict) else None
        if problem is not None or not isinstance(writer_json, dict):
            detail = f"schema id {schema_id}: {problem or 'not a record schema'}"
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, detail)
        log.info("schema id %d resolved (fingerprint %s)", schema_id, schema_fingerprint(writer_json)[:16])
        return _Resolved(writer)


def pinned_lookup(schema_id: int, schema: Mapping[str, Any] | None = None) -> Callable[[int], str | None]:
    """Without a registry: only `schema_id` is known, and it stands for the guard's own schema
    (`schema`, default the shipped one: the job refuses to start unless producers write with it)."""
    own = json.dumps(schema if schema is not None else load_schema_json())

    def lookup(candidate: int) -> str | None:
        return own if candidate == schema_id else None

    return lookup


def registry_lookup(client: Any) -> Callable[[int], str | None]:
    """Look ids up through a confluent-kafka `SchemaRegistryClient` (it caches by id too)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    def lookup(schema_id: int) -> str | None:
        try:
            schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise SchemaLookupError(f"HTTP {exc.http_status_code}: {exc.error_message}") from None
        except Exception as exc:  # connection refused, TLS, timeouts: the registry did not answer
            raise SchemaLookupError(type(exc).__name__) from None
        if (schema.schema_type or "AVRO") != "AVRO":
            raise NotAvroSchemaError(str(schema.schema_type))
        text: str = schema.schema_str
        return text

    return lookup


def registry_client(conf: dict[str, Any]) -> Any:
    """A Schema Registry client (`mock://...` URLs give the in-memory mock, for tests)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)


def _configured_decoder(settings: Settings) -> AvroDecoder | None:
    """The decoder the settings describe (registry, else pinned id), or None when neither is set."""
    if settings.schema_registry_url:
        return AvroDecoder(registry_lookup(registry_client(settings.registry_config())))
    if settings.avro_schema_id is not None:
        return AvroDecoder(pinned_lookup(settings.avro_schema_id))
    return None


def avro_decoder(settings: Settings) -> AvroDecoder | None:
    """The decoder for the job's Avro topics (None when every input is JSON)."""
    if "avro" not in settings.input_formats.values():
        return None
    decoder = _configured_decoder(settings)
    if decoder is None:  # the settings model refuses this; never decode unpinned
        raise ValueError("Avro input needs schema_registry_url or avro_schema_id")
    return decoder


class ReplayAvro:
    """How an audit reads Avro originals: as the job did, from the job's settings.

    One decoder per reader schema, the event schema of the ruleset that decided (the
    shipped one, or a past commit's). The writer schema comes from the registry when one is
    configured; with a pinned id, or with no settings at all (an exported file read
    without them), the guard's own schema of that time is the writer — for every id when
    nothing is pinned, so a record the job could not resolve shows as a mismatch, never a
    match.
    """

    def __init__(self, settings: Settings | None) -> None:
        """Build from the job's settings (None: no registry, no pinned id)."""
        self._registry: Callable[[int], str | None] | None = None
        self._pinned_id: int | None = None
        if settings is not None and settings.schema_registry_url:
            self._registry = registry_lookup(registry_client(settings.registry_config()))
        elif settings is not None:
            self._pinned_id = settings.avro_schema_id
        self._by_reader: dict[str, AvroDecoder] = {}

    @property
    def configured(self) -> bool:
        """True when built from settings naming a registry or a pinned id (as the job ran)."""
        return self._registry is not None or self._pinned_id is not None

    def decoder(self, reader_schema: Mapping[str, Any] | None = None) -> AvroDecoder:
        """The decoder into `reader_schema` (default the shipped event schema), cached."""
        key = "" if reader_schema is None else json.dumps(reader_schema, sort_keys=True)
        decoder = self._by_reader.get(key)
        if decoder is None:
            decoder = AvroDecoder(self._lookup_for(reader_schema), reader_schema=reader_schema)
            self._by_reader[key] = decoder
        return decoder

    def _lookup_for(self, reader_schema: Mapping[str, Any] | None) -> Callable[[int], str | None]:
        if self._registry is not None:
            return self._registry
        if self._pinned_id is not None:
            return pinned_lookup(self._pinned_id, reader_schema)
        own = json.dumps(reader_schema if reader_schema is not None else load_schema_json())
        return lambda _schema_id: own


def decode_input(
    raw: bytes | None, input_format: str, avro: AvroDecoder | None, receivable: Container[str] | None
) -> Event | Envelope | Malformed:
    """Decode one input record by its topic's format, the one way the job and replay share.

    Avro goes through `avro` (writer schema by id); JSON through the envelope gate when
    `receivable` is given (the event types some rule can forward), else validated in full.
    """
    if input_format == "avro" and avro is not None:
        return avro.decode(raw)
    if receivable is None:
        return decode_json(raw)
    return decode_json_gated(raw, receivable)
