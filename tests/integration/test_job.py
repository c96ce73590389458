"""`partner-guard run` as a real process against the embedded broker (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.engine_scenarios import (
    FORBIDDEN,
    INPUT,
    STATE_TOPICS,
    prepare,
    sigkill_and_restart,
    sigterm_and_restart,
    wait_consumed,
)
from tests.integration.kafka_helpers import PARTNERS, ROOT, produce, read_blocked, read_topic, start_guard
from tests.integration.records import AD_ID, app_install, consent, keyed_event

pytestmark = pytest.mark.integration


def test_conservation_no_leaks_and_metrics_agree(
    broker: EmbeddedBroker, tmp_path: Path, count: int = 20_000
) -> None:
    generator = prepare(broker)
    events = list(generator.events(count))
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, "conservation", transactional_id="guard-c-0")
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, events)
        wait_consumed(guard, len(events))
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
        wait_consumed(guard, len(accounts))
        blocked = read_blocked(broker.bootstrap)
        revoked = {b["event_id"]: b["reasons"] for b in blocked if b["partner"] == "install-attribution"}
        for account in accounts[:100]:
            assert revoked.get(f"ev-{account[::-1]}") == ["consent_interest_based_ads_denied"], account
        forwarded = read_topic(broker.bootstrap, "partner.install-attribution.events")
        assert len(forwarded) == 20  # the controls, and only them
    finally:
        assert guard.stop() == 0


def test_sigkill_mid_stream_loses_nothing(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = prepare(broker, population=1000, seed=9)
    sigkill_and_restart(
        broker, tmp_path, list(generator.events(20_000)), 4_000, transactional_id="guard-kill-0"
    )


def test_sigterm_exits_cleanly_and_leaves_no_open_transaction(broker: EmbeddedBroker, tmp_path: Path) -> None:
    generator = prepare(broker, population=500, seed=13)
    stopped_in_s = sigterm_and_restart(
        broker, tmp_path, list(generator.events(12_000)), 3_000, 10, transactional_id="guard-term-0"
    )
    assert stopped_in_s < 10


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
        wait_consumed(guard, len(poison) + 1)
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
        wait_consumed(guard, len(records))
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
