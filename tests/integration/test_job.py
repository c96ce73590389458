"""`partner-guard run` as a real process against the embedded broker (no mocks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.core.codec import decode_json
from streams.core.identifiers import pseudonym
from streams.core.models import Event
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    KEY_ENV,
    PARTNERS,
    ROOT,
    GuardProcess,
    produce,
    read_blocked,
    read_topic,
    seed_population,
    start_guard,
    wait_all_committed,
)
from tests.integration.records import AD_ID, app_install, consent, keyed_event

pytestmark = pytest.mark.integration

INPUT = "internal.events"
STATE_TOPICS = ["privacy.consent", "member.signup-status"]
PARTNER_KEYS = {
    "install-attribution": KEY_ENV["PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION"].encode(),
    "signup-conversions": KEY_ENV["PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS"].encode(),
}
FORBIDDEN = re.compile(
    r"acct-\d|prof-\d|dev-[0-9a-f]|@|example\.com|https?:|/title/|stranger things|squid game|the crown"
    r"|\b203\.0\.\d{1,3}\.(?!0\b)\d{1,3}\b|650 555|watch_history|search_query|title_id",
    re.IGNORECASE,
)


def _prepare(broker: EmbeddedBroker, population: int = 2000, seed: int = 5) -> TrafficGenerator:
    return seed_population(broker.bootstrap, INPUT, population, seed)


def _wait_consumed(guard: GuardProcess, count: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if guard.metric_value("partner_guard_records_in_total") >= count:
            return
        if guard.process.poll() is not None:
            raise AssertionError(f"guard died: {guard.log()}")
        time.sleep(0.25)
    raise AssertionError(f"guard consumed {guard.metric_value('partner_guard_records_in_total')} of {count}")


def _event_ids(records: list[KeyedRecord]) -> list[str | None]:
    """The event id of each valid input; None for malformed inputs (blocked by offset)."""
    decoded = (decode_json(record.value) for record in records)
    return [d.event_id if isinstance(d, Event) else None for d in decoded]


def _outcomes(broker: EmbeddedBroker, inputs: list[KeyedRecord]) -> dict[str, Counter[str]]:
    """Per partner: how often each input (by source offset-free identity) was forwarded or blocked."""
    ids = [i for i in _event_ids(inputs) if isinstance(i, str)]
    outcomes: dict[str, Counter[str]] = {p: Counter() for p in PARTNERS}
    for partner in PARTNERS:
        by_pseudonym = {pseudonym(PARTNER_KEYS[partner], "event_id", i): i for i in ids}
        for _, value, _ in read_topic(broker.bootstrap, f"partner.{partner}.events"):
            record = orjson.loads(value or b"{}")
            outcomes[partner][by_pseudonym[record["event_id"]]] += 1
    for blocked in read_blocked(broker.bootstrap):
        source = blocked["source"]
        outcomes[blocked["partner"]][
            blocked["event_id"] or f"offset:{source['partition']}:{source['offset']}"
        ] += 1
    return outcomes


def test_conservation_no_leaks_and_metrics_agree(
    broker: EmbeddedBroker, tmp_path: Path, count: int = 20_000
) -> None:
    generator = _prepare(broker)
    events = list(generator.events(count))
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, "conservation", transactional_id="guard-c-0")
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, events)
        _wait_consumed(guard, len(events))
        forwarded = {p: read_topic(broker.bootstrap, f"partner.{p}.events") for p in PARTNERS}
        blocked = read_blocked(broker.bootstrap)
        blocked_by_partner = Counter(b["partner"] for b in blocked)
        for partner in PARTNERS:
            assert len(forwarded[partner]) + blocked_by_partner[partner] == len(events), partner
            assert len(forwarded[partner]) > 100  # the mix really forwards something
            assert guard.metric_value(
                "partner_guard_decisions_total", partner=partner, verdict="forward"
            ) == len(forwarded[partner])
            assert (
                guard.metric_value("partner_guard_decisions_total", partner=partner, verdict="block")
                == (blocked_by_partner[partner])
            )
            for _, value, _ in forwarded[partner]:
                assert not FORBIDDEN.search((value or b"").decode()), value
        assert guard.metric_value("partner_guard_records_in_total") == len(events)
        reasons = Counter(r for b in blocked for r in b["reasons"])
        for expected in (
            "event_type_not_allowed",
            "malformed",
            "consent_gpc",
            "kids_profile",
            "consent_interest_based_ads_denied",
            "consent_us_privacy_opt_out",
            "consent_tcf_denied",
        ):
            assert reasons[expected] > 0, (expected, reasons)
        per_reason = guard.metric_value("partner_guard_block_reasons_total", reason="malformed")
        assert per_reason == reasons["malformed"]
    finally:
        assert guard.stop() == 0


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_read_your_revocation_100_times(broker: EmbeddedBroker, tmp_path: Path, store: str) -> None:
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [INPUT], STATE_TOPICS, 3)
    accounts = [f"ryr-{i:03d}" for i in range(120)]
    grant = [consent(a, ad_cookies="granted") for a in accounts]
    produce(broker.bootstrap, "privacy.consent", grant)
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        INPUT,
        "ryr",
        transactional_id="guard-ryr-0",
        extra_env={
            "PARTNER_GUARD_BATCH_TIMEOUT_MS": "20",
            "PARTNER_GUARD_STATE_STORE": store,
            "PARTNER_GUARD_STATE_DIR": str(tmp_path / "state"),
        },
    )
    try:
        guard.wait_ready()

        def install(account: str) -> KeyedRecord:  # an event id not made of the account id (P10)
            return keyed_event(app_install(f"ev-{account[::-1]}", account, properties={"campaign_id": "ryr"}))

        consent_producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        event_producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        for account in accounts[:100]:  # revocation produced and acknowledged, then at once the event
            revocation = consent(account, "denied")
            consent_producer.produce("privacy.consent", revocation.value, revocation.key)
            assert consent_producer.flush(10) == 0
            event = install(account)
            event_producer.produce(INPUT, event.value, event.key)
            assert event_producer.flush(10) == 0
        produce(broker.bootstrap, INPUT, [install(a) for a in accounts[100:]])  # controls: still granted
        _wait_consumed(guard, len(accounts))
        blocked = read_blocked(broker.bootstrap)
        revoked = {b["event_id"]: b["reasons"] for b in blocked if b["partner"] == "install-attribution"}
        for account in accounts[:100]:
            assert revoked.get(f"ev-{account[::-1]}") == ["consent_interest_based_ads_denied"], account
        forwarded = read_topic(broker.bootstrap, "partner.install-attribution.events")
        assert len(forwarded) == 20  # the controls, and only them
    finally:
        assert guard.stop() == 0


def test_sigkill_mid_stream_loses_nothing(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = _prepare(broker, population=1000, seed=9)
    sigkill_and_restart(
        broker, tmp_path, list(generator.events(20_000)), 4_000, transactional_id="guard-kill-0"
    )


def sigkill_and_restart(
    broker: EmbeddedBroker, tmp_path: Path, events: list[KeyedRecord], kill_after: int, **guard_options: Any
) -> None:
    """SIGKILL the guard once `kill_after` inputs are consumed, restart it: every input has its outputs.

    Shared by both engines' tests; duplicates are printed (the embedded broker does not hide
    aborted transactions, and the Faust engine runs at least once).
    """
    first = start_guard(broker.bootstrap, tmp_path, INPUT, "kill", **guard_options)
    first.wait_ready()
    produce(broker.bootstrap, INPUT, events)
    _wait_consumed(first, kill_after)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    second = start_guard(broker.bootstrap, tmp_path, INPUT, "kill", **guard_options)
    try:
        second.wait_ready()
        wait_all_committed(broker.bootstrap, "kill", INPUT, len(events), guards=[second])
        outcomes = _outcomes(broker, events)
        ids = _event_ids(events)
        malformed = sum(1 for i in ids if i is None)
        for partner in PARTNERS:
            seen = outcomes[partner]
            missing = [i for i in ids if i is not None and seen[i] == 0]
            assert not missing, (partner, len(missing))
            assert sum(1 for key in seen if key.startswith("offset:")) == malformed
            duplicates = sum(n - 1 for n in seen.values() if n > 1)
            print(
                f"{partner}: {duplicates} duplicate outputs of {len(events)} inputs "
                f"after SIGKILL ({guard_options})"
            )
    finally:
        assert second.stop() == 0


def test_sigterm_exits_cleanly_and_leaves_no_open_transaction(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = _prepare(broker, population=500, seed=13)
    events = list(generator.events(12_000))
    first = start_guard(broker.bootstrap, tmp_path, INPUT, "term", transactional_id="guard-term-0")
    first.wait_ready()
    produce(broker.bootstrap, INPUT, events)
    _wait_consumed(first, 3_000)
    started = time.monotonic()
    assert first.stop(timeout_s=10) == 0
    assert time.monotonic() - started < 10
    second = start_guard(broker.bootstrap, tmp_path, INPUT, "term", transactional_id="guard-term-0")
    try:
        second.wait_ready()
        wait_all_committed(broker.bootstrap, "term", INPUT, len(events), guards=[second])
        outcomes = _outcomes(broker, events)
        for partner in PARTNERS:  # every input exactly once: the first instance committed all it wrote
            assert sum(outcomes[partner].values()) == len(events), partner
            assert max(outcomes[partner].values()) == 1, partner
    finally:
        assert second.stop() == 0


def test_poison_records_are_blocked_and_the_job_keeps_running(broker: EmbeddedBroker, tmp_path: Path) -> None:
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [INPUT], STATE_TOPICS, 1)
    produce(
        broker.bootstrap,
        "privacy.consent",
        [consent("p1")],
    )
    good = {
        "event_id": "ev-good",
        "event_type": "app_open",
        "event_time": 1795000000000,
        "account_id": "p1",
        "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
        "context": {"country": "US"},
    }
    oversized = dict(good, event_id="ev-big", properties={"campaign_id": "x" * 60_000})
    poison = [
        KeyedRecord(b"p1", b"{not json"),
        KeyedRecord(None, orjson.dumps(dict(good, event_id="ev-keyless", event_type="brand_new_type"))),
        KeyedRecord(b"p1", b""),
        KeyedRecord(b"p1", None),
        KeyedRecord(b"p1", orjson.dumps(oversized)),
        KeyedRecord(b"p1", b"\xff\xfe\x00\x01"),
    ]
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        INPUT,
        "poison",
        transactional_id="guard-poison-0",
        extra_env={"PARTNER_GUARD_MAX_RECORD_BYTES": "40000"},
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, [*poison, KeyedRecord(b"p1", orjson.dumps(good))])
        _wait_consumed(guard, len(poison) + 1)
        blocked = read_blocked(broker.bootstrap)
        mine = [b for b in blocked if b["partner"] == "install-attribution"]
        by_offset = {b["source"]["offset"]: b for b in mine}
        assert sorted(by_offset) == [0, 1, 2, 3, 5]  # offset 4 forwards: its oversized campaign is dropped
        assert by_offset[0]["reasons"] == ["malformed"] and by_offset[0]["original_b64"]
        assert (
            by_offset[1]["reasons"] == ["event_type_not_allowed"]
            and by_offset[1]["source"]["key_b64"] is None
        )
        assert by_offset[2]["reasons"] == ["malformed"] and by_offset[3]["reasons"] == ["malformed"]
        assert by_offset[5]["reasons"] == ["malformed"]
        other = {b["source"]["offset"]: b for b in blocked if b["partner"] == "signup-conversions"}
        assert sorted(other) == [0, 1, 2, 3, 4, 5, 6]
        assert other[4]["reduced"] and other[4]["reasons"] == ["event_type_not_allowed", "record_too_large"]
        assert other[4]["original_b64"] is None and other[4]["original_size"] > 60_000
        forwarded = [
            orjson.loads(v or b"")
            for _, v, _ in read_topic(broker.bootstrap, "partner.install-attribution.events", expect=2)
        ]
        assert len(forwarded) == 2 and all("campaign_id" not in f for f in forwarded)
        assert guard.status("/healthz") == 200 and guard.process.poll() is None
    finally:
        assert guard.stop() == 0


def test_avro_input_topic_decides_like_json(broker: EmbeddedBroker, tmp_path: Path) -> None:
    from streams.core.codec import encode_avro
    from streams.core.schema import event_schema, event_schema_fingerprint

    avro_topic = "internal.events.avro"
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [avro_topic], STATE_TOPICS, 1)
    produce(broker.bootstrap, "privacy.consent", [consent("av-1")])
    install = app_install(
        "av-ok",
        "av-1",
        device={"platform": "android", "ad_id": AD_ID},
        properties={"title_name": "Dark", "campaign_id": "winter"},
    )
    play = dict(install, event_id="av-play", event_type="playback_started")
    records = [KeyedRecord(b"av-1", encode_avro(e, event_schema())) for e in (install, play)]
    records.append(KeyedRecord(b"av-1", orjson.dumps(install)))  # JSON on an Avro topic is malformed
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        avro_topic,
        "avro",
        transactional_id="guard-avro-0",
        extra_env={
            "PARTNER_GUARD_INPUT_FORMATS": f"{avro_topic}=avro",
            "PARTNER_GUARD_AVRO_SCHEMA_ID": "1",  # no registry: the pinned writer schema
            "PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT": event_schema_fingerprint(),
        },
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, avro_topic, records)
        _wait_consumed(guard, len(records))
        forwarded = [
            orjson.loads(v or b"")
            for _, v, _ in read_topic(broker.bootstrap, "partner.install-attribution.events", expect=1)
        ]
        assert len(forwarded) == 1 and forwarded[0]["campaign_id"] == "winter"
        assert "title_name" not in forwarded[0] and "Dark" not in orjson.dumps(forwarded[0]).decode()
        blocked = read_blocked(broker.bootstrap)
        mine = {b["source"]["offset"]: b for b in blocked if b["partner"] == "install-attribution"}
        assert mine[1]["reasons"] == ["event_type_not_allowed"] and mine[1]["source"]["format"] == "avro"
        assert mine[2]["reasons"] == ["malformed"]
        replay = subprocess.run(  # auditors re-decide Avro originals with the same decoder
            [sys.executable, "-m", "streams", "replay", "--no-git"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PARTNER_GUARD_BOOTSTRAP_SERVERS": broker.bootstrap},
            timeout=120,
            check=False,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
    finally:
        assert guard.stop() == 0
