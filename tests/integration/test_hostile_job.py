"""P5 against a running guard: one record of each class that used to stop the job.

Before the fix each of these inputs killed `partner-guard run` (and again on every restart):
an event time outside the datetime range, a number no JSON writer can write, a stored consent
record whose time cannot be written back, and a key too large to travel with its blocked
record. Now each ends blocked (or forwarded without the offending field), the committed
offset moves past it, and the good record after them is forwarded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.broker.embedded import EmbeddedBroker
from streams.core.identifiers import pseudonym
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import KEY_ENV, produce, read_blocked, read_topic, start_guard

pytestmark = pytest.mark.integration

INPUT = "internal.events"
GROUP = "hostile"
INSTALL_KEY = KEY_ENV["PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION"].encode()


def _open(event_id: str, account: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "app_open",
        "event_time": 1795000000000,
        "account_id": account,
        "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
        "context": {"country": "US"},
        "properties": {"campaign_id": "spring"},
    }
    return event | changes


def _committed(bootstrap: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
    try:
        (committed,) = consumer.committed([TopicPartition(INPUT, 0)], timeout=10)
        return int(committed.offset)
    finally:
        consumer.close()


def test_no_record_stops_the_job(broker: EmbeddedBroker, tmp_path: Path) -> None:
    ensure_topics(
        {"bootstrap.servers": broker.bootstrap}, [INPUT], ["privacy.consent", "member.signup-status"], 1
    )
    granted = {"interest_based_ads": "granted", "jurisdiction": "US"}
    produce(
        broker.bootstrap,
        "privacy.consent",
        [
            KeyedRecord(b"account:h1", orjson.dumps({"subject": "account:h1", **granted})),
            # a time no writer can write back: stored fail-closed instead of breaking decisions
            KeyedRecord(
                b"account:h2", orjson.dumps({"subject": "account:h2", "updated_at": 10**19, **granted})
            ),
        ],
    )
    inputs = [
        _open("ev-time", "h1", event_time="0001-01-01T00:00:00+01:00"),  # OverflowError
        _open("ev-number", "h1", properties={"campaign_id": 2**70}),  # beyond 64 bits
        _open("ev-state", "h2"),  # reads the unreadable consent record
        _open("ev-key", "h1"),  # produced with a key too large to travel with its blocked record
        _open("ev-signal", "h1", user={"age": 12}),  # a signal the guard cannot read
        _open("ev-good", "h1", device={"platform": "android", "os_version": "18"}),
    ]
    records = [KeyedRecord(b"h", json.dumps(e).encode()) for e in inputs]  # json: orjson refuses 2**70
    records[3] = KeyedRecord(b"k" * 950_000, records[3].value)
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, GROUP, transactional_id="guard-hostile-0")
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, records)
        deadline = time.monotonic() + 240
        while guard.metric_value("partner_guard_records_in_total") < len(inputs):
            assert guard.process.poll() is None, f"guard died: {guard.log()}"
            assert time.monotonic() < deadline, "guard did not consume every record"
            time.sleep(0.25)

        blocked = read_blocked(broker.bootstrap)  # one view per (input, partner)
        install = {b["source"]["offset"]: b for b in blocked if b["partner"] == "install-attribution"}
        assert install[0]["reasons"] == ["malformed"]
        assert "consent_interest_based_ads_denied" in install[2]["reasons"]
        assert 3 not in install  # a huge key does not keep the install from its partner
        assert install[4]["reasons"] == ["unknown_signal"] and install[4]["details"] == [
            "unknown_signal: user.age"
        ]
        signup = {b["source"]["offset"]: b for b in blocked if b["partner"] == "signup-conversions"}
        assert sorted(signup) == list(range(len(inputs)))  # P5 for both partners
        assert signup[3]["source"]["key_b64"] is None and signup[3]["source"]["key_size"] == 950_000

        forwarded = {
            record["event_id"]: record
            for record in (
                orjson.loads(v or b"")
                for _, v, _ in read_topic(broker.bootstrap, "partner.install-attribution.events")
            )
        }
        good = pseudonym(INSTALL_KEY, "event_id", "ev-good")
        number = pseudonym(INSTALL_KEY, "event_id", "ev-number")
        assert good in forwarded  # the job kept going: the good record after them all is forwarded
        assert pseudonym(INSTALL_KEY, "event_id", "ev-key") in forwarded
        assert (number in forwarded) != (1 in install)  # exactly one outcome for the big number
        assert "campaign_id" not in forwarded.get(number, {})
        assert _committed(broker.bootstrap) == len(inputs)  # the offset moved past every one
        assert guard.metric_value("partner_guard_undeclared_fields_total", path="device.os_version") == 1
        assert guard.status("/healthz") == 200 and guard.process.poll() is None
    finally:
        assert guard.stop() == 0
