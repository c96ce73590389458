"""P9 (read-your-revocation) on the kafka engine while the guard is busy with a backlog.

The guard also reads the state topics whenever it is idle (no input fetched), so a test that
leaves it idle between a revocation and its event passes even without the catch-up before
each batch. Here the guard never is: it is paused (SIGSTOP) in the middle of a backlog, the
revocations and their events are produced (each revocation acknowledged before its event),
interleaved with more backlog, and it is resumed (the pause is kept short, one round trip a
revocation, well inside the session timeout, so the group does not rebalance meanwhile).
Everything it then reads until the last event is already in the topic, so only the catch-up
after each fetch can apply a revocation before its event is decided. The promise mutant
`p9-catch-up-before-batch` (tests/mutants/catalogue.py) removes that catch-up, and this test
fails with it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    committed_offsets,
    produce,
    read_blocked,
    read_topic,
    start_guard,
    wait_all_committed,
)
from tests.integration.records import app_install, consent, keyed_event

pytestmark = pytest.mark.integration

INPUT = "internal.events"
STATE_TOPICS = ["privacy.consent", "member.signup-status"]
GROUP = "p9-load"
BACKLOG = 30_000  # content events (blocked early): many batches of work before the revocations
BETWEEN = 100  # more backlog after each pair, so the events fall into many batches
BATCH = 500
REVOKED = [f"p9l-{i:03d}" for i in range(100)]
CONTROLS = [f"p9l-c{i:02d}" for i in range(20)]


def _filler(start: int, count: int) -> list[KeyedRecord]:
    """Content events no partner receives: decided (blocked) and committed like any input."""
    return [
        keyed_event(app_install(f"fill-{n}", f"fill-{n % 97}", event_type="playback_started"))
        for n in range(start, start + count)
    ]


def _event_id(account: str) -> str:
    """An event id that does not spell the account (one that does is never projected)."""
    return f"ev-{(REVOKED + CONTROLS).index(account)}"


def _install(account: str) -> KeyedRecord:
    return keyed_event(app_install(_event_id(account), account, properties={"campaign_id": "p9-load"}))


def test_read_your_revocation_while_busy_with_a_backlog(broker: EmbeddedBroker, tmp_path: Path) -> None:
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [INPUT], STATE_TOPICS, 3)
    produce(
        broker.bootstrap, "privacy.consent", [consent(a, ad_cookies="granted") for a in REVOKED + CONTROLS]
    )
    produce(broker.bootstrap, INPUT, _filler(0, BACKLOG))
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        INPUT,
        GROUP,
        transactional_id="guard-p9-load-0",
        extra_env={"PARTNER_GUARD_BATCH_SIZE": str(BATCH)},
    )
    paused = False
    try:
        guard.wait_ready()
        while guard.metric_value("partner_guard_records_in_total") == 0:  # the backlog is being worked
            assert guard.process.poll() is None, guard.log()
            time.sleep(0.02)
        os.kill(guard.process.pid, signal.SIGSTOP)
        paused = True
        # Precondition (not a timing assertion on the guard): it was paused mid-backlog. What it
        # fetched but had not committed is at most the batch being decided and the one committing.
        done = sum(committed_offsets(broker.bootstrap, GROUP, INPUT).values())
        assert done + 2 * BATCH < BACKLOG, f"the guard was not paused inside the backlog ({done} done)"

        consent_producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        event_producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        for n, account in enumerate(REVOKED):  # acknowledged revocation, then its event, then more work
            revocation = consent(account, "denied")
            consent_producer.produce("privacy.consent", revocation.value, revocation.key)
            assert consent_producer.flush(10) == 0
            for record in [_install(account), *_filler(BACKLOG + n * BETWEEN, BETWEEN)]:
                event_producer.produce(INPUT, record.value, record.key)  # acknowledged below, together
        for record in [_install(a) for a in CONTROLS]:  # still granted: forwarded
            event_producer.produce(INPUT, record.value, record.key)
        assert event_producer.flush(30) == 0  # every event acknowledged before the guard resumes
        os.kill(guard.process.pid, signal.SIGCONT)
        paused = False

        total = BACKLOG + len(REVOKED) * (1 + BETWEEN) + len(CONTROLS)
        wait_all_committed(broker.bootstrap, GROUP, INPUT, total, guards=[guard])
        blocked = {
            b["event_id"]: b["reasons"]
            for b in read_blocked(broker.bootstrap)
            if b["partner"] == "install-attribution" and str(b["event_id"]).startswith("ev-")
        }
        honoured = [a for a in REVOKED if blocked.get(_event_id(a)) == ["consent_interest_based_ads_denied"]]
        assert honoured == REVOKED, f"revocations not honoured: {sorted(set(REVOKED) - set(honoured))}"
        forwarded = read_topic(broker.bootstrap, "partner.install-attribution.events")
        assert len(forwarded) == len(CONTROLS)  # the controls, and only them
    finally:
        if paused:
            os.kill(guard.process.pid, signal.SIGCONT)
        assert guard.stop() == 0
