"""Fault tests: broker paused, rebalance with two instances; and the tests that need a broker
with real transaction semantics (aborted-record filtering, fencing), which run only against
`PARTNER_GUARD_TEST_BOOTSTRAP`."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.core.codec import decode_json
from streams.core.identifiers import pseudonym
from streams.core.models import Event
from streams.gen.traffic import KeyedRecord
from tests.integration.engine_scenarios import (
    assert_blocked_as_stale,
    lagging_installs,
    seed_lagging_account,
    wait_consumed,
)
from tests.integration.kafka_helpers import (
    KEY_ENV,
    PARTNERS,
    produce,
    read_blocked,
    read_topic,
    seed_population,
    start_guard,
    wait_all_committed,
)

pytestmark = pytest.mark.integration
EXTERNAL = os.environ.get("PARTNER_GUARD_TEST_BOOTSTRAP")
needs_real_kafka = pytest.mark.skipif(
    not EXTERNAL,
    reason="needs a broker that hides aborted records and fences producers: set PARTNER_GUARD_TEST_BOOTSTRAP "
    "(e.g. `docker compose up kafka`); the embedded broker lacks both",
)


def _per_partner_outputs(
    bootstrap: str, blocked_topic: str, events: list[KeyedRecord]
) -> dict[str, Counter[str]]:
    """How many outputs each input produced, per partner (malformed inputs by source offset)."""
    keys = {p: KEY_ENV[f"PARTNER_GUARD_KEY_{p.upper().replace('-', '_')}"].encode() for p in PARTNERS}
    ids = [d.event_id for d in (decode_json(e.value) for e in events) if isinstance(d, Event)]
    out: dict[str, Counter[str]] = {p: Counter() for p in PARTNERS}
    for partner in PARTNERS:
        back = {pseudonym(keys[partner], "event_id", i): i for i in ids}
        for _, value, _ in read_topic(bootstrap, f"partner.{partner}.events"):
            out[partner][back[orjson.loads(value or b"{}")["event_id"]]] += 1
    for blocked in read_blocked(bootstrap, blocked_topic):
        source = blocked["source"]
        out[blocked["partner"]][blocked["event_id"] or f"{source['partition']}:{source['offset']}"] += 1
    return out


def _assert_nothing_lost(outputs: dict[str, Counter[str]], events: list[KeyedRecord]) -> None:
    """Every input has at least one output per partner (valid ones by event id, malformed by offset)."""
    decoded = [decode_json(e.value) for e in events]
    ids = {d.event_id for d in decoded if isinstance(d, Event)}
    malformed = len(decoded) - len(ids)
    for partner in PARTNERS:
        seen = set(outputs[partner])
        assert ids <= seen, (partner, len(ids - seen))
        assert len(seen - ids) == malformed, partner


def test_broker_paused_mid_stream(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = seed_population(broker.bootstrap, "internal.events", 500, 23)
    events = list(generator.events(8000))
    guard = start_guard(
        broker.bootstrap, tmp_path, "internal.events", "pause", transactional_id="guard-pause-0"
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, "internal.events", events)
        wait_consumed(guard, 1500)
        os.kill(broker.process.pid, signal.SIGSTOP)
        time.sleep(5)
        assert guard.process.poll() is None  # the guard waits; it does not crash
        os.kill(broker.process.pid, signal.SIGCONT)
        wait_consumed(guard, len(events))
        wait_all_committed(broker.bootstrap, "pause", "internal.events", len(events), guards=[guard])
        outputs = _per_partner_outputs(broker.bootstrap, "guard.blocked", events)
        _assert_nothing_lost(outputs, events)
        assert guard.status("/healthz") == 200
    finally:
        assert guard.stop() == 0


def test_rebalance_with_two_instances(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = seed_population(broker.bootstrap, "internal.events", 500, 29)
    events = list(generator.events(12_000))
    first = start_guard(
        broker.bootstrap, tmp_path, "internal.events", "pair", transactional_id="guard-pair-0"
    )
    second = None
    try:
        first.wait_ready()
        produce(broker.bootstrap, "internal.events", events[:6000])
        wait_consumed(first, 2000)
        second = start_guard(
            broker.bootstrap, tmp_path, "internal.events", "pair", transactional_id="guard-pair-1"
        )
        second.wait_ready()
        deadline = time.monotonic() + 60
        while "assigned" not in second.log() and time.monotonic() < deadline:  # the group rebalanced
            time.sleep(0.2)
        produce(broker.bootstrap, "internal.events", events[6000:])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = first.metric_value("partner_guard_records_in_total") + second.metric_value(
                "partner_guard_records_in_total"
            )
            if done >= len(events):
                break
            time.sleep(0.5)
        wait_all_committed(broker.bootstrap, "pair", "internal.events", len(events), guards=[first, second])
        assert second.metric_value("partner_guard_records_in_total") > 0  # the second one took partitions
        outputs = _per_partner_outputs(broker.bootstrap, "guard.blocked", events)
        _assert_nothing_lost(outputs, events)
        for partner in PARTNERS:
            duplicates = sum(n - 1 for n in outputs[partner].values() if n > 1)
            print(f"{partner}: {duplicates} duplicate outputs across the rebalance")
    finally:
        assert first.stop() == 0
        if second is not None:
            assert second.stop() == 0


@needs_real_kafka
def test_sigkill_on_real_kafka_gives_exactly_once(tmp_path: Path) -> None:
    bootstrap = str(EXTERNAL)
    run = uuid.uuid4().hex[:8]
    input_topic, blocked_topic = f"eos-in-{run}", f"eos-blocked-{run}"
    generator = seed_population(bootstrap, input_topic, 500, 31)
    events = list(generator.events(10_000))
    env = {"PARTNER_GUARD_BLOCKED_TOPIC": blocked_topic}
    first = start_guard(
        bootstrap, tmp_path, input_topic, f"eos-{run}", extra_env=env, transactional_id=f"eos-{run}"
    )
    first.wait_ready()
    produce(bootstrap, input_topic, events)
    wait_consumed(first, 3000)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    second = start_guard(
        bootstrap, tmp_path, input_topic, f"eos-{run}", extra_env=env, transactional_id=f"eos-{run}"
    )
    try:
        second.wait_ready()
        wait_all_committed(bootstrap, f"eos-{run}", input_topic, len(events), guards=[second])
        outputs = _per_partner_outputs(bootstrap, blocked_topic, events)
        for partner in PARTNERS:
            assert max(outputs[partner].values()) == 1, partner  # aborted records hidden: no duplicate
    finally:
        assert second.stop() == 0


@needs_real_kafka
def test_a_fenced_instance_stops(tmp_path: Path) -> None:
    bootstrap = str(EXTERNAL)
    run = uuid.uuid4().hex[:8]
    seed_population(bootstrap, f"fence-in-{run}", 100, 37)
    first = start_guard(
        bootstrap, tmp_path, f"fence-in-{run}", f"fence-{run}", transactional_id=f"fence-{run}"
    )
    first.wait_ready()
    second = start_guard(
        bootstrap, tmp_path, f"fence-in-{run}", f"fence-{run}", transactional_id=f"fence-{run}"
    )
    try:
        second.wait_ready()
        produce(bootstrap, f"fence-in-{run}", [KeyedRecord(b"k", b"{}") for _ in range(200)])
        first.process.wait(timeout=120)
        assert first.process.returncode != 0  # fenced: a fatal error stops the old instance
    finally:
        first.stop()
        assert second.stop() == 0


def test_state_lag_fails_closed(broker: EmbeddedBroker, tmp_path: Path) -> None:
    seed_lagging_account(broker.bootstrap)
    env = {"PARTNER_GUARD_STATE_CATCHUP_TIMEOUT_MS": "1"}
    guard = start_guard(
        broker.bootstrap, tmp_path, "internal.events", "lag", env, transactional_id="guard-lag-0"
    )
    try:
        guard.wait_ready()
        started = threading.Event()

        def flood() -> None:  # state records arrive faster than one catch-up may apply them
            def records() -> Iterator[KeyedRecord]:
                started.set()
                for i in range(1_500_000):
                    subject = f"account:filler-{i}"
                    yield KeyedRecord(subject.encode(), orjson.dumps({"subject": subject}))

            produce(broker.bootstrap, "privacy.consent", records())

        threading.Thread(target=flood, daemon=True).start()
        started.wait()
        time.sleep(1.0)
        events = lagging_installs(200)
        for start in range(0, len(events), 20):
            produce(broker.bootstrap, "internal.events", events[start : start + 20])
            time.sleep(0.2)
        wait_consumed(guard, len(events))
        assert_blocked_as_stale(broker.bootstrap, events)
    finally:
        assert guard.stop() == 0
