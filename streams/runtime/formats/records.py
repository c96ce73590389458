"""Output records: partner records and the documented blocked-record format.

Blocked record (topic `guard.blocked`, JSON), format v2: one record per input that at least
one partner did not receive, listing every withholding partner's decision:

    {"format": "partner-guard.blocked.v2", "event_id", "ruleset_digest",
     "decisions": [{"partner", "rule_id", "reasons": [...], "details": [...]}, ...],
     "snapshot": {"consent": [...], "signup_status": {...} | null, "stale": bool}
                | null when no rule allowed the event type (the decision read no state),
     "source": {"topic", "partition", "offset", "timestamp_ms", "key_b64", "format"}
               (+ "key_sha256", "key_size" for a key over 1 KiB in full mode,
                "key_redacted" in redacted/encrypted mode),
     "payload_mode": "full" | "redacted" | "encrypted" | "reference",
     "original_b64": raw input bytes (base64; full mode) | null,
     "original_redacted": the event with tagged values as keyed hashes (redacted mode),
     "key_id", "nonce_b64", "ciphertext_b64": AES-256-GCM of the raw bytes (encrypted mode),
     "original_size", "original_sha256", "reduced": bool}

A partner missing from `decisions` received the input (its forwarded record is on its
topic). In v2 the input was decoded with the envelope gate: an event whose type no rule can
receive is read only as far as its type and id (`decode_json_gated`), so replay decodes v2
originals the same way.

Payload mode `reference` (setting `blocked_original: reference`, only for inputs no rule can
receive): nothing of the original is kept; `source`, `original_sha256` and `original_size`
identify it, and replay fetches it from the source topic (`source_expired` once retention
has dropped it).

In redacted and encrypted modes `event_id`, the input key and the snapshot's subjects and
account id are keyed hashes (see `payload.py`). The blocked record's Kafka key is the
input key (full mode, up to 1 KiB), else its hash.

Format v1 (written before v2; `replay` still reads it) held one record per blocked
(input, partner) pair, with `partner`, `rule_id`, `reasons` and `details` (and
`details_dropped` when reduced) at the top level and everything else as above; its inputs
were always validated in full. `partner_views` turns either version into v1-shaped views,
one per (input, partner), for the audit tools.

Partner record headers: pg-ruleset-digest, pg-rule-id, pg-source-topic, pg-source-partition,
pg-source-offset (`partner_headers`).

Blocked record headers: pg-partners (comma-separated), pg-reasons (comma-separated, every partner's),
pg-ruleset-digest, pg-source-topic, pg-source-partition, pg-source-offset. Input headers
are not copied.

Size. A blocked record whose key, value and headers together exceed the broker limit is
reduced: `record_too_large` is added to every decision, and everything an input can make
large is dropped or hashed — the original (its SHA-256 and size stay), the snapshot
(`snapshot_sha256`), an `event_id` over 256 characters (`sha256:<hex>`), the details
(`details_dropped` per decision). The reduced form is measured again before it is produced,
so one record can never poison a transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic_core import PydanticSerializationError

from streams.core.models import Decision, StateSnapshot
from streams.core.reasons import Reason
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.kafka.io import Headers

BLOCKED_FORMAT_V1 = "partner-guard.blocked.v1"
BLOCKED_FORMAT = "partner-guard.blocked.v2"
# Members that differ per partner; a v2 record lists them under "decisions".
PER_PARTNER_MEMBERS = ("partner", "rule_id", "reasons", "details", "details_dropped")
# An input no rule can receive, kept by reference: its source position, SHA-256 and size say
# which record it was; replay fetches it from the source topic while retention keeps it.
REFERENCE_PAYLOAD: dict[str, Any] = {"payload_mode": "reference", "original_b64": None}
_REFERENCE_PAYLOAD_JSON = orjson.dumps(REFERENCE_PAYLOAD)[1:-1]
# The details of a block the job made because the outputs of an input could not be built
# (an exception outside the decision): replay cannot reproduce it by re-deciding.
CONTAINED_ERROR_DETAIL = "outputs could not be built: "


# The per-input records below are plain slots dataclasses, never changed once built: a
# frozen dataclass's __init__ costs about four times as much, on every input.
@dataclass(slots=True)
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


@dataclass(slots=True)
class BlockedInput:
    """What every partner's blocked copy of one input shares (built once per input).

    `snapshot_json` and `source_json` are serialized JSON values (`snapshot`, `source`);
    `payload_json` is `payload`'s members serialized (`orjson.dumps` without the braces).
    """

    kafka_key: bytes | None
    event_id: str | None
    snapshot_json: bytes
    source_json: bytes
    payload: dict[str, Any]
    payload_json: bytes
    original_size: int
    original_sha256: str


def _dumps_snapshot(snapshot: StateSnapshot | None, protector: PayloadProtector) -> bytes:
    """`orjson.dumps` of the snapshot's JSON-mode dump (identifiers hashed unless full mode).

    In full mode nothing is hashed: pydantic writes the same bytes straight from the model,
    without the intermediate dicts (`tests/runtime/formats/test_blocked_assembly.py` pins the equality).
    """
    if snapshot is None:
        return b"null"
    try:
        if protector.mode == "full":
            return StateSnapshot.__pydantic_serializer__.to_json(snapshot)
        return orjson.dumps(protector.snapshot(snapshot.model_dump(mode="json")))
    except (orjson.JSONEncodeError, PydanticSerializationError):  # defence in depth: values are bounded
        return b"null"


# The serialized parts of `source` that repeat (per input topic, per format). Bounded: an
# engine names its topics and formats in its configuration.
_SOURCE_HEADS: dict[str, bytes] = {}
_SOURCE_TAILS: dict[str, bytes] = {}
_MAX_SOURCE_PARTS = 256


def _source_part(parts: dict[str, bytes], name: str, head: bytes, tail: bytes) -> bytes:
    part = parts.get(name)
    if part is None:
        part = head + orjson.dumps(name) + tail
        if len(parts) < _MAX_SOURCE_PARTS:
            parts[name] = part
    return part


def _source_json(source: SourceRef, key_json: bytes) -> bytes:
    """`orjson.dumps` of the `source` members (`key_json`: the key's), the repeating parts serialized once."""
    topic, input_format = source.topic, source.input_format
    head = _SOURCE_HEADS.get(topic) or _source_part(_SOURCE_HEADS, topic, b'{"topic":', b',"partition":')
    tail = _SOURCE_TAILS.get(input_format) or _source_part(_SOURCE_TAILS, input_format, b',"format":', b"}")
    timestamp = b"null" if source.timestamp_ms is None else b"%d" % source.timestamp_ms
    return b'%s%d,"offset":%d,"timestamp_ms":%s,%s%s' % (
        head,
        source.partition,
        source.offset,
        timestamp,
        key_json,
        tail,
    )


def blocked_input(
    source: SourceRef,
    raw: bytes,
    snapshot: StateSnapshot | None,
    event_id: str | None,
    protector: PayloadProtector,
    by_reference: bool = False,
) -> BlockedInput:
    """The shared parts of an input's blocked record, identifiers protected per the mode.

    `by_reference`: keep no copy of the original (`blocked_original: reference`).
    """
    kafka_key, key_json = protector.input_key_serialized(source.key)
    if by_reference:
        payload, payload_json = REFERENCE_PAYLOAD, _REFERENCE_PAYLOAD_JSON
    elif protector.mode == "full":  # the source reference is only the ciphertext's associated data
        payload, payload_json = protector.protect_serialized(raw, {})
    else:
        reference = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
        payload, payload_json = protector.protect_serialized(raw, reference)
    return BlockedInput(
        kafka_key=kafka_key,
        event_id=protector.identifier(event_id),
        snapshot_json=_dumps_snapshot(snapshot, protector),
        source_json=_source_json(source, key_json),
        payload=payload,
        payload_json=payload_json,
        original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
    )


def _size(key: bytes | None, value: bytes, headers: Headers) -> int:
    size = len(key or b"") + len(value)
    for name, header in headers:
        size += len(name) + len(header or b"")
    return size


@dataclass(slots=True)
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


def _reduced(body: dict[str, Any], shared: BlockedInput) -> dict[str, Any]:
    """The record with everything an input can make large dropped or hashed."""
    event_id = body["event_id"]
    if isinstance(event_id, str) and len(event_id) > MAX_EVENT_ID_CHARS:
        event_id = "sha256:" + hashlib.sha256(event_id.encode("utf-8", "replace")).hexdigest()
    reduced = {k: v for k, v in body.items() if k not in _PAYLOAD_MEMBERS}
    reduced |= {
        "decisions": [
            {
                **entry,
                "reasons": [*entry["reasons"], Reason.RECORD_TOO_LARGE.value],
                "details": [],
                "details_dropped": len(entry["details"]),
            }
            for entry in body["decisions"]
        ],
        "event_id": event_id,
        "snapshot": None,
        "snapshot_sha256": hashlib.sha256(shared.snapshot_json).hexdigest(),
        "original_b64": None,
        "reduced": True,
    }
    return reduced


@dataclass(slots=True)
class DecisionsPart:
    """The partners' decisions of a blocked record, serialized once, with the headers they give.

    Built per input from its withheld decisions, or once for decisions that are the same for
    many inputs (every event type no rule can receive gets the same ones).
    """

    withheld: list[Withheld]
    ruleset_digest: str
    json: bytes  # the members `"ruleset_digest":...,"decisions":[...]`
    partners_header: bytes
    reasons_header: bytes
    digest_header: bytes
    headers_size: int  # the header names and the three values above

    @classmethod
    def of(cls, withheld: list[Withheld]) -> DecisionsPart:
        """The part of `withheld` (at least one decision, all of one ruleset)."""
        digest = withheld[0].decision.ruleset_digest
        decisions = _decision_members(withheld)
        partners = ",".join([w.decision.partner for w in withheld]).encode()
        reasons = ",".join(dict.fromkeys([r for w in withheld for r in w.reasons])).encode()
        digest_header = str(digest).encode()
        return cls(
            withheld=withheld,
            ruleset_digest=digest,
            json=b'"ruleset_digest":' + orjson.dumps(digest) + b',"decisions":' + orjson.dumps(decisions),
            partners_header=partners,
            reasons_header=reasons,
            digest_header=digest_header,
            headers_size=_HEADER_NAMES_SIZE + len(partners) + len(reasons) + len(digest_header),
        )


# Why 1,024: the distinct decision lists come from the rules' reasons and details, a few
# hundred in the generator's mix; details can name keys from the input, so the memo is bounded
# (and emptied when full: hostile variety costs what building every part costs, no more).
MAX_REMEMBERED_PARTS = 1024
# Only parts up to this size are remembered: details can list every undeclared key of a hostile
# input, and 1,024 parts of a megabyte each would be a gigabyte kept. The common parts (a rule's
# reasons and a few details) are a few hundred bytes.
MAX_REMEMBERED_PART_BYTES = 4096


class DecisionsParts:
    """`DecisionsPart.of`, remembered per distinct list of decisions (partner, rule, reasons,
    details, digest): most inputs are blocked for one of a few combinations, and serializing
    them once saves that work on every such input. A part's `withheld` may be another input's
    list with those same members (what the record is made of; `event_id` is taken from the input)."""

    def __init__(self, limit: int = MAX_REMEMBERED_PARTS) -> None:
        self._parts: dict[tuple[tuple[Any, ...], ...], DecisionsPart] = {}
        self._limit = limit

    def of(self, withheld: list[Withheld]) -> DecisionsPart:
        """The part of `withheld` (at least one decision, all of one ruleset)."""
        key = tuple(
            [
                (
                    w.decision.partner,
                    w.decision.rule_id,
                    w.reasons,
                    w.decision.details,
                    w.decision.ruleset_digest,
                )
                for w in withheld
            ]
        )
        part = self._parts.get(key)
        if part is None:
            part = DecisionsPart.of(withheld)
            if len(part.json) <= MAX_REMEMBERED_PART_BYTES:
                if len(self._parts) >= self._limit:
                    self._parts.clear()
                self._parts[key] = part
        return part


_HEADER_NAMES = (
    "pg-partners",
    "pg-reasons",
    "pg-ruleset-digest",
    "pg-source-topic",
    "pg-source-partition",
    "pg-source-offset",
)
_HEADER_NAMES_SIZE = sum(len(name) for name in _HEADER_NAMES)
_VALUE_HEAD = b'{"format":"' + BLOCKED_FORMAT.encode() + b'","event_id":'


def _decision_members(withheld: list[Withheld]) -> list[dict[str, Any]]:
    return [
        {
            "partner": w.decision.partner,
            "rule_id": w.decision.rule_id,
            "reasons": w.reasons,
            "details": w.decision.details,
        }
        for w in withheld
    ]


def _body(withheld: list[Withheld], shared: BlockedInput) -> dict[str, Any]:
    """The blocked record as a document (what `blocked_record` serializes, member for member)."""
    return {
        "format": BLOCKED_FORMAT,
        "event_id": shared.event_id,
        "ruleset_digest": withheld[0].decision.ruleset_digest,
        "decisions": _decision_members(withheld),
        "snapshot": orjson.Fragment(shared.snapshot_json),
        "source": orjson.Fragment(shared.source_json),
        **shared.payload,
        "original_size": shared.original_size,
        "original_sha256": shared.original_sha256,
        "reduced": False,
    }


def _blocked_headers(part: DecisionsPart, topic: bytes, partition: bytes, offset: bytes) -> Headers:
    """A blocked record's headers: who withheld it, why, under which ruleset, from where."""
    return [
        ("pg-partners", part.partners_header),
        ("pg-reasons", part.reasons_header),
        ("pg-ruleset-digest", part.digest_header),
        ("pg-source-topic", topic),
        ("pg-source-partition", partition),
        ("pg-source-offset", offset),
    ]


def blocked_record(
    withheld: list[Withheld],
    shared: BlockedInput,
    source: SourceRef,
    max_bytes: int,
    decisions: DecisionsPart | None = None,
) -> tuple[bytes | None, bytes, Headers]:
    """Kafka key, value and headers of an input's v2 blocked record, reduced when over `max_bytes`.

    The value is `orjson.dumps` of the record's document, byte for byte, assembled from parts
    serialized once (`decisions`, when given, is the part of `withheld`).
    """
    part = decisions or DecisionsPart.of(withheld)
    payload = shared.payload_json  # its members, to follow "source"
    partition, offset = str(source.partition).encode(), str(source.offset).encode()
    topic = source.topic.encode()
    value = b"".join(
        (
            _VALUE_HEAD,
            orjson.dumps(shared.event_id),
            b",",
            part.json,
            b',"snapshot":',
            shared.snapshot_json,
            b',"source":',
            shared.source_json,
            b"," if payload else b"",
            payload,
            b',"original_size":',
            str(shared.original_size).encode(),
            b',"original_sha256":"',
            shared.original_sha256.encode(),
            b'","reduced":false}',
        )
    )
    headers = _blocked_headers(part, topic, partition, offset)
    size = (
        len(shared.kafka_key or b"")
        + len(value)
        + part.headers_size
        + len(topic)
        + len(partition)
        + len(offset)
    )
    if size > max_bytes:
        reduced = _reduced(_body(withheld, shared), shared)
        headers = _headers(reduced, source)
        value = orjson.dumps(reduced)
        if _size(shared.kafka_key, value, headers) > max_bytes:
            raise BlockedRecordTooLargeError(
                f"a reduced blocked record is {len(value)} bytes; limit {max_bytes}"
            )
    return shared.kafka_key, value, headers


def content_blocked_record(
    raw: bytes,
    source: SourceRef,
    event_id: str,
    protector: PayloadProtector,
    by_reference: bool,
    part: DecisionsPart,
    max_bytes: int,
) -> tuple[bytes | None, bytes, Headers] | None:
    """`blocked_record(part.withheld, blocked_input(source, raw, None, event_id, protector,
    by_reference), source, max_bytes, part)` in one step, for an input no rule can receive in
    full mode: the same bytes, without the intermediate `BlockedInput`.

    None when the mode is not full or the record would exceed `max_bytes` (the general path
    builds it, reduced); `tests/runtime/formats/test_blocked_assembly.py` pins the equality.
    """
    if protector.mode != "full":
        return None
    kafka_key, key_json = protector.input_key_serialized(source.key)
    payload = _REFERENCE_PAYLOAD_JSON if by_reference else protector.protect_serialized(raw, {})[1]
    partition, offset = str(source.partition).encode(), str(source.offset).encode()
    topic = source.topic.encode()
    value = b"".join(
        (
            _VALUE_HEAD,
            orjson.dumps(event_id),
            b",",
            part.json,
            b',"snapshot":null,"source":',
            _source_json(source, key_json),
            b",",
            payload,
            b',"original_size":',
            str(len(raw)).encode(),
            b',"original_sha256":"',
            hashlib.sha256(raw).hexdigest().encode(),
            b'","reduced":false}',
        )
    )
    size = len(kafka_key or b"") + len(value) + part.headers_size + len(topic) + len(partition) + len(offset)
    if size > max_bytes:
        return None
    headers = _blocked_headers(part, topic, partition, offset)
    return kafka_key, value, headers


def _headers(body: dict[str, Any], source: SourceRef) -> Headers:
    decisions = body["decisions"]
    reasons = dict.fromkeys([r for entry in decisions for r in entry["reasons"]])
    return [
        ("pg-partners", ",".join([entry["partner"] for entry in decisions]).encode()),
        ("pg-reasons", ",".join(reasons).encode()),
        ("pg-ruleset-digest", str(body["ruleset_digest"]).encode()),
        ("pg-source-topic", source.topic.encode()),
        ("pg-source-partition", str(source.partition).encode()),
        ("pg-source-offset", str(source.offset).encode()),
    ]


def partner_views(blocked: dict[str, Any]) -> list[dict[str, Any]]:
    """One v1-shaped view per (input, partner) of a blocked record of either format.

    A v1 record (or a view already) is returned as it is; a v2 record gives one view per
    decision, each with the shared members and `format` kept, so replay knows how it was
    decoded. A v2 record whose decisions are not a list of objects gives one view without a
    partner, which replay reports as an invalid record.
    """
    decisions = blocked.get("decisions")
    if decisions is None:
        return [blocked]
    shared = {k: v for k, v in blocked.items() if k != "decisions"}
    if not isinstance(decisions, list) or not decisions or not all(isinstance(d, dict) for d in decisions):
        return [shared]
    return [{**shared, **{k: d[k] for k in PER_PARTNER_MEMBERS if k in d}} for d in decisions]


# Headers of a forwarded partner record: which ruleset and rule decided it, and which input it
# came from. `replay forwarded` re-checks the projection against the rule at that digest and
# matches every input to exactly one output per partner (forwarded here, or blocked).
PARTNER_HEADER_NAMES = (
    "pg-ruleset-digest",
    "pg-rule-id",
    "pg-source-topic",
    "pg-source-partition",
    "pg-source-offset",
)


def partner_headers(decision: Decision, source: SourceRef) -> Headers:
    """The headers of a forwarded record (`PARTNER_HEADER_NAMES`); never payload values."""
    return [
        ("pg-ruleset-digest", decision.ruleset_digest.encode()),
        ("pg-rule-id", decision.rule_id.encode()),
        ("pg-source-topic", source.topic.encode()),
        ("pg-source-partition", b"%d" % source.partition),
        ("pg-source-offset", b"%d" % source.offset),
    ]


def partner_record(decision: Decision) -> tuple[bytes | None, bytes]:
    """Key (the pseudonymous event id, when projected) and value of a forwarded record."""
    record = decision.record or {}
    key = record.get("event_id")
    return (key.encode() if isinstance(key, str) else None), orjson.dumps(record)
