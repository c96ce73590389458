"""Output records: partner records and the documented blocked-record format.

Blocked record (topic `guard.blocked`, JSON, one per blocked (input, partner) pair):

    {"format": "partner-guard.blocked.v1", "partner", "rule_id", "ruleset_digest",
     "reasons": [...], "details": [...], "event_id",
     "snapshot": {"consent": [...], "signup_status": {...} | null, "stale": bool}
                | null when no rule allowed the event type (the decision read no state),
     "source": {"topic", "partition", "offset", "timestamp_ms", "key_b64", "format"}
               (+ "key_sha256", "key_size" for a key over 1 KiB in full mode,
                "key_redacted" in redacted/encrypted mode),
     "payload_mode": "full" | "redacted" | "encrypted",
     "original_b64": raw input bytes (base64; full mode) | null,
     "original_redacted": the event with tagged values as keyed hashes (redacted mode),
     "key_id", "nonce_b64", "ciphertext_b64": AES-256-GCM of the raw bytes (encrypted mode),
     "original_size", "original_sha256", "reduced": bool}

In redacted and encrypted modes `event_id`, the input key and the snapshot's subjects and
account id are keyed hashes (see `payload.py`). The blocked record's Kafka key is the
input key (full mode, up to 1 KiB), else its hash.

Headers: pg-partner, pg-reasons (comma-separated), pg-rule, pg-ruleset-digest,
pg-source-topic, pg-source-partition, pg-source-offset. Input headers are not copied.

Size. A blocked record whose key, value and headers together exceed the broker limit is
reduced: `record_too_large` is added, and everything an input can make large is dropped
or hashed — the original (its SHA-256 and size stay), the snapshot (`snapshot_sha256`),
an `event_id` over 256 characters (`sha256:<hex>`), the details (`details_dropped`). The
reduced form is measured again before it is produced, so one record can never poison a
transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.models import Decision, StateSnapshot
from streams.core.reasons import Reason
from streams.runtime.kafka_io import Headers
from streams.runtime.payload import PayloadProtector

BLOCKED_FORMAT = "partner-guard.blocked.v1"
# The details of a block the job made because the outputs of an input could not be built
# (an exception outside the decision): replay cannot reproduce it by re-deciding.
CONTAINED_ERROR_DETAIL = "outputs could not be built: "


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where an input record came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    input_format: str


MAX_EVENT_ID_CHARS = 256
_PAYLOAD_MEMBERS = ("original_b64", "original_redacted", "ciphertext_b64", "nonce_b64")


class BlockedRecordTooLargeError(Exception):
    """Even the reduced form of a blocked record exceeds the limit (a configuration error)."""


@dataclass(frozen=True, slots=True)
class BlockedInput:
    """What every partner's blocked copy of one input shares (built once per input)."""

    kafka_key: bytes | None
    event_id: str | None
    snapshot_json: bytes
    source_json: orjson.Fragment
    payload: dict[str, Any]
    original_size: int
    original_sha256: str


def _dumps_snapshot(snapshot: StateSnapshot | None, protector: PayloadProtector) -> bytes:
    if snapshot is None:
        return b"null"
    try:
        return orjson.dumps(protector.snapshot(snapshot.model_dump(mode="json")))
    except orjson.JSONEncodeError:  # defence in depth: the state tables bound every value
        return b"null"


def blocked_input(
    source: SourceRef,
    raw: bytes,
    snapshot: StateSnapshot | None,
    event_id: str | None,
    protector: PayloadProtector,
) -> BlockedInput:
    """The shared parts of an input's blocked records, identifiers protected per the mode."""
    kafka_key, key_members = protector.input_key(source.key)
    source_members = {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "timestamp_ms": source.timestamp_ms,
        **key_members,
        "format": source.input_format,
    }
    reference = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
    return BlockedInput(
        kafka_key=kafka_key,
        event_id=protector.identifier(event_id),
        snapshot_json=_dumps_snapshot(snapshot, protector),
        source_json=orjson.Fragment(orjson.dumps(source_members)),
        payload=protector.protect(raw, reference),
        original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
    )


def _size(key: bytes | None, value: bytes, headers: Headers) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v or b"") for k, v in headers)


def _reduced(body: dict[str, Any], shared: BlockedInput, reasons: list[str]) -> dict[str, Any]:
    """The record with everything an input can make large dropped or hashed."""
    event_id = body["event_id"]
    if isinstance(event_id, str) and len(event_id) > MAX_EVENT_ID_CHARS:
        event_id = "sha256:" + hashlib.sha256(event_id.encode("utf-8", "replace")).hexdigest()
    reduced = {k: v for k, v in body.items() if k not in _PAYLOAD_MEMBERS}
    reduced |= {
        "reasons": reasons,
        "details": [],
        "details_dropped": len(body["details"]),
        "event_id": event_id,
        "snapshot": None,
        "snapshot_sha256": hashlib.sha256(shared.snapshot_json).hexdigest(),
        "original_b64": None,
        "reduced": True,
    }
    return reduced


def blocked_record(
    decision: Decision,
    shared: BlockedInput,
    source: SourceRef,
    max_bytes: int,
    extra_reasons: tuple[str, ...] = (),
) -> tuple[bytes | None, bytes, Headers]:
    """Kafka key, value and headers of one blocked record, reduced when they would exceed `max_bytes`."""
    reasons = list(dict.fromkeys((*decision.reasons, *extra_reasons)))
    body = {
        "format": BLOCKED_FORMAT,
        "partner": decision.partner,
        "rule_id": decision.rule_id,
        "ruleset_digest": decision.ruleset_digest,
        "reasons": reasons,
        "details": list(decision.details),
        "event_id": shared.event_id,
        "snapshot": orjson.Fragment(shared.snapshot_json),
        "source": shared.source_json,
        **shared.payload,
        "original_size": shared.original_size,
        "original_sha256": shared.original_sha256,
        "reduced": False,
    }
    value = orjson.dumps(body)
    headers = _headers(decision, source, reasons)
    if _size(shared.kafka_key, value, headers) > max_bytes:
        reasons = [*reasons, Reason.RECORD_TOO_LARGE.value]
        headers = _headers(decision, source, reasons)
        value = orjson.dumps(_reduced(body, shared, reasons))
        if _size(shared.kafka_key, value, headers) > max_bytes:
            raise BlockedRecordTooLargeError(
                f"a reduced blocked record is {len(value)} bytes; limit {max_bytes}"
            )
    return shared.kafka_key, value, headers


def _headers(decision: Decision, source: SourceRef, reasons: list[str]) -> Headers:
    return [
        ("pg-partner", decision.partner.encode()),
        ("pg-reasons", ",".join(reasons).encode()),
        ("pg-rule", decision.rule_id.encode()),
        ("pg-ruleset-digest", decision.ruleset_digest.encode()),
        ("pg-source-topic", source.topic.encode()),
        ("pg-source-partition", str(source.partition).encode()),
        ("pg-source-offset", str(source.offset).encode()),
    ]


def partner_record(decision: Decision) -> tuple[bytes | None, bytes]:
    """Key (the pseudonymous event id, when projected) and value of a forwarded record."""
    record = decision.record or {}
    key = record.get("event_id")
    return (key.encode() if isinstance(key, str) else None), orjson.dumps(record)
