"""Opt-in republish: send on records that a corrected ruleset now forwards.

Never the default. Anyone who can write to the blocked topic can write a blocked record,
so a record is only a candidate when all of these hold:

1. it verifies (`match`): re-decided under the ruleset its digest names, found in the
   rules directories or git history, it gives the recorded decision;
2. its source topic is one of the guard's input topics (and never a guard output);
3. the original read back from the recorded source topic/partition/offset has the
   recorded SHA-256 (and so does the payload that verified) — the bytes that are
   re-decided and sent are the ones read from the source, never the blocked record's;
4. the corrected ruleset forwards it under the *current* consent and sign-up state.

Each (partner, source record) goes once per run, and once across runs: it is produced
through a transaction together with a marker in the compacted `guard.republished` topic
(key: partner|topic|partition|offset), so a second run republishes nothing.

`plan_republish` works out every record to send and why each other candidate is not sent
(it reads Kafka, never writes); `republish` then sends that plan, unless `--dry-run`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import exitcodes
from streams.audit.replay import Outcome
from streams.audit.source import fetch_records, read_to_end
from streams.core.decide import decide
from streams.core.models import Event
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import REPUBLISHED_TOPIC, Settings
from streams.runtime.formats.payload import Keyring, reveal
from streams.runtime.formats.records import SourceRef, partner_headers, partner_record
from streams.runtime.kafka.avro_input import AvroDecoder, ReplayAvro, decode_input
from streams.runtime.kafka.calls import CallWatchdog, RetryPolicy, start_transactions
from streams.runtime.kafka.io import Headers, produce
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.state.reader import StateReader
from streams.runtime.state.tables import ConsentTable, SignupStatusTable, snapshot_for

# The republish transaction's calls; one still blocked `hang_grace_s` past its timeout ends
# the command (exit 2): librdkafka can block past its own timeouts (librdkafka#5456).
SEND_POLICY = RetryPolicy(call_timeout_s=30.0)
COMMIT_TIMEOUT_S = 60.0


@dataclass
class RepublishResult:
    """What republish did (or would do, with --dry-run)."""

    candidates: int = 0
    sent: int = 0
    already_sent: int = 0
    refused_by_fresh_check: int = 0
    loop_guarded: int = 0
    unverified: int = 0
    source_mismatch: int = 0
    duplicates: int = 0
    planned: list[PlannedRecord] = field(default_factory=list)


def marker_key(outcome: Outcome) -> str:
    """The idempotency key of one (partner, source record)."""
    source = outcome.blocked.get("source") or {}
    return f"{outcome.partner}|{source.get('topic')}|{source.get('partition')}|{source.get('offset')}"


def _position(outcome: Outcome) -> tuple[str, int, int]:
    source = outcome.blocked["source"]
    return source["topic"], source["partition"], source["offset"]


def _same_original(outcome: Outcome, raw: bytes, keyring: Keyring | None) -> bool:
    """True when the bytes at the source are the ones recorded, and the ones that verified."""
    recorded = outcome.blocked.get("original_sha256")
    if hashlib.sha256(raw).hexdigest() != recorded:
        return False
    verified = reveal(outcome.blocked, keyring)
    return verified is not None and hashlib.sha256(verified).hexdigest() == recorded


def _already_republished(kafka: dict[str, Any]) -> set[str]:
    consumer = Consumer(
        {
            **kafka,
            "group.id": f"partner-guard-republish-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(REPUBLISHED_TOPIC, timeout=10)
        partitions = [
            TopicPartition(REPUBLISHED_TOPIC, p, OFFSET_BEGINNING)
            for p in metadata.topics[REPUBLISHED_TOPIC].partitions
        ]
        return {(m.key() or b"").decode("utf-8", "replace") for m in read_to_end(consumer, partitions)}
    finally:
        consumer.close()


@dataclass(frozen=True)
class PlannedRecord:
    """One partner record republish will send, with the marker that makes it go only once."""

    marker: str
    topic: str
    key: bytes | None
    value: bytes
    event_id: str
    ruleset_digest: str
    headers: Headers = field(default_factory=list)  # `partner_headers`


def republish(
    outcomes: list[Outcome], settings: Settings, ruleset: Ruleset, keyring: Keyring | None, dry_run: bool
) -> RepublishResult:
    """Send on what `ruleset` (with real partner keys) forwards under the current state:
    plan every record first, then (unless `dry_run`) send the plan in one transaction."""
    result = plan_republish(outcomes, settings, ruleset, keyring)
    if not dry_run and result.planned:
        _send(result.planned, settings)
        result.sent = len(result.planned)
    return result


def plan_republish(
    outcomes: list[Outcome], settings: Settings, ruleset: Ruleset, keyring: Keyring | None
) -> RepublishResult:
    """Every record republish would send, and why each other candidate is not sent.

    Reads (never writes) Kafka: the markers of earlier runs, the current state, the originals.
    """
    kafka = settings.kafka_base()
    result = RepublishResult()
    forwarded = [o for o in outcomes if o.whatif is not None and o.whatif.forwarded]
    result.candidates = len(forwarded)
    if not forwarded:
        return result
    verified = [o for o in forwarded if o.status == "match"]
    result.unverified = len(forwarded) - len(verified)
    ensure_topics(kafka, [], [REPUBLISHED_TOPIC], 1)
    sourced = _new_sources(verified, settings, ruleset, _already_republished(kafka), result)
    consent, status = _current_state(kafka, settings)
    originals = fetch_records(kafka, {_position(o) for o in sourced})
    avro = ReplayAvro(settings).decoder(ruleset.event_schema)  # as the job read Avro, into this schema
    for outcome, raw in choose_originals(sourced, originals, keyring, result):
        planned = _fresh_decision(outcome, raw, settings, ruleset, avro, consent, status)
        if planned is None:
            result.refused_by_fresh_check += 1
        else:
            result.planned.append(planned)
    return result


def _new_sources(
    verified: list[Outcome], settings: Settings, ruleset: Ruleset, done: set[str], result: RepublishResult
) -> list[Outcome]:
    """The verified outcomes from an input topic not republished before (counting the others).

    Copies of one (partner, source record) all stay: which of them is genuine is only known
    once the source is read (`choose_originals`).
    """
    outputs = {settings.blocked_topic, REPUBLISHED_TOPIC, *(rule.topic for rule in ruleset.rules)}
    inputs = set(settings.input_topics)
    sourced: list[Outcome] = []
    for outcome in verified:
        source_topic = outcome.blocked["source"]["topic"]
        if source_topic in outputs or source_topic not in inputs:
            result.loop_guarded += 1
        elif marker_key(outcome) in done:
            result.already_sent += 1
        else:
            sourced.append(outcome)
    return sourced


def choose_originals(
    sourced: list[Outcome],
    originals: dict[tuple[str, int, int], bytes | None],
    keyring: Keyring | None,
    result: RepublishResult,
) -> list[tuple[Outcome, bytes]]:
    """One outcome per (partner, source record), with the source bytes it was decided on.

    A copy whose original is not what the source holds is counted as a mismatch before
    copies are folded, so a forged record read first cannot hide the genuine one; further
    genuine copies count as duplicates (sent once).
    """
    chosen: list[tuple[Outcome, bytes]] = []
    taken: set[str] = set()
    for outcome in sourced:
        raw = originals.get(_position(outcome))
        if raw is None or not _same_original(outcome, raw, keyring):
            result.source_mismatch += 1
        elif (key := marker_key(outcome)) in taken:
            result.duplicates += 1
        else:
            taken.add(key)
            chosen.append((outcome, raw))
    return chosen


def _current_state(kafka: dict[str, Any], settings: Settings) -> tuple[ConsentTable, SignupStatusTable]:
    """The consent and sign-up status tables, read to the end of their topics."""
    consent, status = ConsentTable(), SignupStatusTable()
    reader = StateReader(
        kafka,
        {settings.consent_topic: consent.apply, settings.signup_status_topic: status.apply},
        GuardMetrics(),
    )
    try:
        reader.load(settings.state_catchup_timeout_ms / 1000)
    finally:
        reader.close()
    return consent, status


def _fresh_decision(
    outcome: Outcome,
    raw: bytes,
    settings: Settings,
    ruleset: Ruleset,
    avro: AvroDecoder,
    consent: ConsentTable,
    status: SignupStatusTable,
) -> PlannedRecord | None:
    """The record to send when `ruleset` forwards the original under the current state."""
    source_topic = outcome.blocked["source"]["topic"]
    record = decode_input(raw, settings.topic_format(source_topic), avro, None)
    if not isinstance(record, Event):
        return None
    fresh = next(
        d
        for d in decide(record, snapshot_for(record, consent, status, False), ruleset)
        if d.partner == outcome.partner
    )
    if not fresh.forwarded:
        return None
    record_key, value = partner_record(fresh)
    position = outcome.blocked["source"]
    source = SourceRef(source_topic, position["partition"], position["offset"], None, None, "json")
    return PlannedRecord(
        marker=marker_key(outcome),
        topic=ruleset.rule(outcome.partner).topic,
        key=record_key,
        value=value,
        event_id=record.event_id,
        ruleset_digest=ruleset.digest,
        headers=partner_headers(fresh, source),
    )


def _send(planned: list[PlannedRecord], settings: Settings) -> None:
    """Every planned record and its marker, in one transaction."""
    producer = Producer(
        {
            **settings.kafka_base(),
            "transactional.id": f"partner-guard-republish-{settings.group_id}",
            "enable.idempotence": True,
        }
    )
    watchdog = CallWatchdog(_exit_hung)
    start_transactions(producer, SEND_POLICY, watchdog=watchdog)  # TransactionFatalError: nothing sent
    producer.begin_transaction()
    for record in planned:  # a plan larger than the producer's queue waits for space
        produce(
            producer,
            record.topic,
            record.value,
            record.key,
            headers=[("pg-republished", b"1"), *record.headers],
        )
        marker = {
            "event_id": record.event_id,
            "ruleset_digest": record.ruleset_digest,
            "at_ms": int(time.time() * 1000),
        }
        produce(producer, REPUBLISHED_TOPIC, orjson.dumps(marker), record.marker.encode())
    with watchdog.watch("commit", COMMIT_TIMEOUT_S + SEND_POLICY.hang_grace_s):
        producer.commit_transaction(COMMIT_TIMEOUT_S)


def _exit_hung(step: str, waited_s: float) -> None:
    """A blocked librdkafka call cannot be unwound: say so and end the command."""
    print(
        f"republish could not run: Kafka call '{step}' still blocked after {waited_s:.0f} s; run it "
        "again (its markers send each record once, whether or not this transaction committed)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(exitcodes.REFUSED)
