"""Output records: partner records and the documented blocked-record format.

Blocked record (topic `guard.blocked`, JSON, one per blocked (input, partner) pair):

    {"format": "partner-guard.blocked.v1", "partner", "rule_id", "ruleset_digest",
     "reasons": [...], "details": [...], "event_id",
     "snapshot": {"consent": [...], "signup_status": {...} | null, "stale": bool}
                | null when no rule allowed the event type (the decision read no state),
     "source": {"topic", "partition", "offset", "timestamp_ms", "key_b64", "format"},
     "payload_mode": "full" | "redacted" | "encrypted",
     "original_b64": raw input bytes (base64; full mode) | null,
     "original_redacted": the event with tagged values as keyed hashes (redacted mode),
     "key_id", "nonce_b64", "ciphertext_b64": AES-256-GCM of the raw bytes (encrypted mode),
     "original_size", "original_sha256", "reduced": bool}

Headers: pg-partner, pg-reasons (comma-separated), pg-rule, pg-ruleset-digest,
pg-source-topic, pg-source-partition, pg-source-offset. A record too large for the broker
is reduced (original dropped, its hash and size kept, `record_too_large` added) before it
is produced, so one record can never poison a transaction.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.models import Decision
from streams.core.reasons import Reason
from streams.runtime.kafka_io import Headers

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


def _b64(raw: bytes | None) -> str | None:
    return base64.b64encode(raw).decode() if raw is not None else None


def source_fragment(source: SourceRef, raw: bytes) -> orjson.Fragment:
    """The parts of a blocked record shared by every partner's copy (built once per input)."""
    return orjson.Fragment(
        orjson.dumps(
            {
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "timestamp_ms": source.timestamp_ms,
                "key_b64": _b64(source.key),
                "format": source.input_format,
            }
        )
    )


def blocked_record(
    decision: Decision,
    snapshot_json: bytes,
    source: SourceRef,
    source_json: orjson.Fragment,
    raw: bytes,
    payload: dict[str, Any],
    raw_sha256: str,
    max_bytes: int,
    extra_reasons: tuple[str, ...] = (),
) -> tuple[bytes, Headers]:
    """The blocked record and its headers, reduced when it would exceed `max_bytes`."""
    reasons = list(dict.fromkeys((*decision.reasons, *extra_reasons)))
    body = {
        "format": BLOCKED_FORMAT,
        "partner": decision.partner,
        "rule_id": decision.rule_id,
        "ruleset_digest": decision.ruleset_digest,
        "reasons": reasons,
        "details": list(decision.details),
        "event_id": decision.event_id,
        "snapshot": orjson.Fragment(snapshot_json),
        "source": source_json,
        **payload,
        "original_size": len(raw),
        "original_sha256": raw_sha256,
        "reduced": False,
    }
    value = orjson.dumps(body)
    if len(value) > max_bytes:
        reasons.append(Reason.RECORD_TOO_LARGE.value)
        small_snapshot = snapshot_json if len(snapshot_json) < max_bytes // 2 else b"null"
        body = {
            k: v for k, v in body.items() if k not in ("original_redacted", "ciphertext_b64", "nonce_b64")
        }
        body |= {
            "original_b64": None,
            "reduced": True,
            "reasons": reasons,
            "snapshot": orjson.Fragment(small_snapshot),
        }
        value = orjson.dumps(body)
    headers: Headers = [
        ("pg-partner", decision.partner.encode()),
        ("pg-reasons", ",".join(reasons).encode()),
        ("pg-rule", decision.rule_id.encode()),
        ("pg-ruleset-digest", decision.ruleset_digest.encode()),
        ("pg-source-topic", source.topic.encode()),
        ("pg-source-partition", str(source.partition).encode()),
        ("pg-source-offset", str(source.offset).encode()),
    ]
    return value, headers


def partner_record(decision: Decision) -> tuple[bytes | None, bytes]:
    """Key (the pseudonymous event id, when projected) and value of a forwarded record."""
    record = decision.record or {}
    key = record.get("event_id")
    return (key.encode() if isinstance(key, str) else None), orjson.dumps(record)
