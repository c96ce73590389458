"""Opt-in republish: send on records that a corrected ruleset now forwards.

Never the default. Each record is re-checked against the *current* consent and sign-up
state before it goes, produced through a transaction together with a marker in the
compacted `guard.republished` topic (key: partner|topic|partition|offset), so a second run
republishes nothing. Loop guard: records whose source is a guard output are never sent.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.audit.replay import Outcome, original_record
from streams.core.decide import decide
from streams.core.models import Event
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings
from streams.runtime.metrics import GuardMetrics
from streams.runtime.payload import Keyring
from streams.runtime.records import partner_record
from streams.runtime.state import ConsentTable, SignupStatusTable, snapshot_for
from streams.runtime.state_reader import StateReader
from streams.runtime.topics import ensure_topics

REPUBLISHED_TOPIC = "guard.republished"


@dataclass
class RepublishResult:
    """What republish did (or would do, with --dry-run)."""

    candidates: int = 0
    sent: int = 0
    already_sent: int = 0
    refused_by_fresh_check: int = 0
    loop_guarded: int = 0
    planned: list[dict[str, Any]] = field(default_factory=list)


def marker_key(outcome: Outcome) -> str:
    """The idempotency key of one (partner, source record)."""
    source = outcome.blocked.get("source") or {}
    return f"{outcome.partner}|{source.get('topic')}|{source.get('partition')}|{source.get('offset')}"


def _already_republished(kafka: dict[str, Any]) -> set[str]:
    consumer = Consumer(
        {
            **kafka,
            "group.id": f"partner-guard-republish-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    keys: set[str] = set()
    try:
        metadata = consumer.list_topics(REPUBLISHED_TOPIC, timeout=10)
        consumer.assign(
            [TopicPartition(REPUBLISHED_TOPIC, p, 0) for p in metadata.topics[REPUBLISHED_TOPIC].partitions]
        )
        idle = time.monotonic()
        while time.monotonic() - idle < 1.5:
            batch = consumer.consume(5000, 0.3)
            if batch:
                idle = time.monotonic()
            keys.update((m.key() or b"").decode() for m in batch if m.error() is None)
    finally:
        consumer.close()
    return keys


def republish(
    outcomes: list[Outcome], settings: Settings, ruleset: Ruleset, keyring: Keyring | None, dry_run: bool
) -> RepublishResult:
    """Send on what `ruleset` (with real partner keys) forwards under the current state."""
    kafka: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka}
    outputs = {settings.blocked_topic, REPUBLISHED_TOPIC, *(rule.topic for rule in ruleset.rules)}
    result = RepublishResult()
    candidates = [o for o in outcomes if o.whatif is not None and o.whatif.forwarded]
    result.candidates = len(candidates)
    if not candidates:
        return result
    ensure_topics(kafka, [], [REPUBLISHED_TOPIC], 1)
    done = _already_republished(kafka)
    consent, status = ConsentTable(), SignupStatusTable()
    reader = StateReader(
        kafka,
        {settings.consent_topic: consent.apply, settings.signup_status_topic: status.apply},
        GuardMetrics(),
    )
    try:
        while reader.catch_up(settings.state_catchup_timeout_ms / 1000):
            pass
    finally:
        reader.close()
    topics = {rule.partner: rule.topic for rule in ruleset.rules}
    for outcome in candidates:
        source_topic = (outcome.blocked.get("source") or {}).get("topic")
        if source_topic in outputs:
            result.loop_guarded += 1
            continue
        key = marker_key(outcome)
        if key in done:
            result.already_sent += 1
            continue
        record = original_record(outcome.blocked, keyring)
        if not isinstance(record, Event):
            result.refused_by_fresh_check += 1
            continue
        fresh = next(
            d
            for d in decide(record, snapshot_for(record, consent, status, False), ruleset)
            if d.partner == outcome.partner
        )
        if not fresh.forwarded:
            result.refused_by_fresh_check += 1
            continue
        record_key, value = partner_record(fresh)
        result.planned.append(
            {
                "marker": key,
                "topic": topics[outcome.partner],
                "key": record_key,
                "value": value,
                "event_id": record.event_id,
                "digest": ruleset.digest,
            }
        )
    if dry_run or not result.planned:
        return result
    producer = Producer(
        {
            **kafka,
            "transactional.id": f"partner-guard-republish-{settings.group_id}",
            "enable.idempotence": True,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for plan in result.planned:
        producer.produce(plan["topic"], plan["value"], plan["key"], headers=[("pg-republished", b"1")])
        marker = {
            "event_id": plan["event_id"],
            "ruleset_digest": plan["digest"],
            "at_ms": int(time.time() * 1000),
        }
        producer.produce(REPUBLISHED_TOPIC, orjson.dumps(marker), plan["marker"].encode())
    producer.commit_transaction(60)
    result.sent = len(result.planned)
    return result
