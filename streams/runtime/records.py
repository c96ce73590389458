"""Output records: partner records and the documented blocked-record format.

Blocked record (topic `guard.blocked`, JSON), format v2: one record per input that at least
one partner did not receive, listing every withholding partner's decision:

    {"format": "partner-guard.blocked.v2", "event_id", "ruleset_digest",
     "decisions": [{"partner", "rule_id", "reasons": [...], "details": [...]}, ...],
     "snapshot": {"consent": [...], "signup_status": {...} | null, "stale": bool}
                | null when no rule allowed the event type (the decision read no state),
     "source": {"topic", "partition", "offset", "timestamp_ms", "key_b64", "format"},
     "payload_mode": "full" | "redacted" | "encrypted" | "reference",
     "original_b64": raw input bytes (base64; full mode) | null,
     "original_redacted": the event with tagged values as keyed hashes (redacted mode),
     "key_id", "nonce_b64", "ciphertext_b64": AES-256-GCM of the raw bytes (encrypted mode),
     "original_size", "original_sha256", "reduced": bool}

Payload mode `reference` (setting `blocked_original: reference`, only for inputs no rule can
receive): nothing of the original is kept; `source`, `original_sha256` and `original_size`
identify it, and replay fetches it from the source topic (`source_expired` once retention
has dropped it).

A partner missing from `decisions` received the input (its forwarded record is on its
topic). In v2 the input was decoded with the envelope gate: an event whose type no rule can
receive is read only as far as its type and id (`decode_json_gated`), so replay decodes v2
originals the same way.

Format v1 (written before v2; `replay` still reads it) held one record per blocked
(input, partner) pair, with `partner`, `rule_id`, `reasons` and `details` at the top level
and everything else as above; its inputs were always validated in full. `partner_views`
turns either version into v1-shaped views, one per (input, partner), for the audit tools.

Headers: pg-partners (comma-separated), pg-reasons (comma-separated, every partner's),
pg-ruleset-digest, pg-source-topic, pg-source-partition, pg-source-offset. A record too large
for the broker is reduced (original dropped, its hash and size kept, `record_too_large`
added to every decision) before it is produced, so one record can never poison a
transaction.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.models import Decision
from streams.core.reasons import Reason
from streams.runtime.kafka_io import Headers

BLOCKED_FORMAT_V1 = "partner-guard.blocked.v1"
BLOCKED_FORMAT = "partner-guard.blocked.v2"
# Members that differ per partner; a v2 record lists them under "decisions".
PER_PARTNER_MEMBERS = ("partner", "rule_id", "reasons", "details")
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


def source_json(source: SourceRef) -> dict[str, Any]:
    """The `source` member of a blocked record."""
    return {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "timestamp_ms": source.timestamp_ms,
        "key_b64": _b64(source.key),
        "format": source.input_format,
    }


@dataclass(frozen=True, slots=True)
class Withheld:
    """One partner's blocking decision and its final reasons (the shell may add `record_too_large`)."""

    decision: Decision
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, decision: Decision, extra_reasons: tuple[str, ...] = ()) -> Withheld:
        """The decision's reasons then the shell's, without repeats."""
        if not extra_reasons:
            return cls(decision, decision.reasons)
        return cls(decision, tuple(dict.fromkeys((*decision.reasons, *extra_reasons))))


def blocked_record(
    withheld: list[Withheld],
    snapshot_json: bytes,
    source: SourceRef,
    raw: bytes,
    payload: dict[str, Any],
    raw_sha256: str,
    max_bytes: int,
) -> tuple[bytes, Headers]:
    """The v2 blocked record of one input and its headers, reduced when over `max_bytes`."""
    first = withheld[0].decision
    decisions = [
        {
            "partner": w.decision.partner,
            "rule_id": w.decision.rule_id,
            "reasons": w.reasons,
            "details": w.decision.details,
        }
        for w in withheld
    ]
    body = {
        "format": BLOCKED_FORMAT,
        "event_id": first.event_id,
        "ruleset_digest": first.ruleset_digest,
        "decisions": decisions,
        "snapshot": orjson.Fragment(snapshot_json),
        "source": source_json(source),
        **payload,
        "original_size": len(raw),
        "original_sha256": raw_sha256,
        "reduced": False,
    }
    value = orjson.dumps(body)
    if len(value) > max_bytes:
        for entry in decisions:
            entry["reasons"] = (*entry["reasons"], Reason.RECORD_TOO_LARGE.value)
        small_snapshot = snapshot_json if len(snapshot_json) < max_bytes // 2 else b"null"
        body = {
            k: v for k, v in body.items() if k not in ("original_redacted", "ciphertext_b64", "nonce_b64")
        }
        body |= {"original_b64": None, "reduced": True, "snapshot": orjson.Fragment(small_snapshot)}
        value = orjson.dumps(body)
    partners = ",".join(w.decision.partner for w in withheld)
    reasons = ",".join(dict.fromkeys(r for entry in decisions for r in entry["reasons"]))
    headers: Headers = [
        ("pg-partners", partners.encode()),
        ("pg-reasons", reasons.encode()),
        ("pg-ruleset-digest", first.ruleset_digest.encode()),
        ("pg-source-topic", source.topic.encode()),
        ("pg-source-partition", str(source.partition).encode()),
        ("pg-source-offset", str(source.offset).encode()),
    ]
    return value, headers


def partner_views(blocked: dict[str, Any]) -> list[dict[str, Any]]:
    """One v1-shaped view per (input, partner) of a blocked record of either format.

    A v1 record (or a view already) is returned as it is; a v2 record gives one view per
    decision, each with the shared members and `format` kept, so replay knows how it was decoded.
    """
    decisions = blocked.get("decisions")
    if not isinstance(decisions, list):
        return [blocked]
    shared = {k: v for k, v in blocked.items() if k != "decisions"}
    if not decisions or not all(isinstance(d, dict) for d in decisions):
        return [shared]  # no partner to verify against: replay reports it as a mismatch
    return [{**shared, **{k: d.get(k) for k in PER_PARTNER_MEMBERS}} for d in decisions]


def partner_record(decision: Decision) -> tuple[bytes | None, bytes]:
    """Key (the pseudonymous event id, when projected) and value of a forwarded record."""
    record = decision.record or {}
    key = record.get("event_id")
    return (key.encode() if isinstance(key, str) else None), orjson.dumps(record)
