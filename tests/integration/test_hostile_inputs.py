"""Inputs that used to stop the job for good: an oversized key or event id, an updated_at of 2^64."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from streams.runtime.formats.records import partner_views
from tests.integration.engine_scenarios import wait_consumed
from tests.integration.kafka_helpers import produce, read_topic, seed_population, start_guard

pytestmark = pytest.mark.integration
MAX_RECORD_BYTES = 300_000


def _event(event_id: str, event_type: str = "title_selected") -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "event_type": event_type,
            "event_time": "2026-11-28T10:00:00Z",
            "account_id": "acct-big",
            "context": {"country": "US"},
        }
    )


def test_oversized_key_event_id_and_updated_at_are_blocked_not_fatal(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    seed_population(broker.bootstrap, "internal.events", 50, 3)
    far = json.dumps({"subject": "account:acct-big", "updated_at": 2**64, "interest_based_ads": "granted"})
    produce(broker.bootstrap, "privacy.consent", [KeyedRecord(b"account:acct-big", far.encode())])
    inputs = [
        KeyedRecord(b"k" * 500_000, _event("big-key")),  # today: the blocked record is ~2.3x the key
        KeyedRecord(b"acct-big", _event("e" * 250_000, "app_install")),
        KeyedRecord(b"acct-big", _event("after")),
        KeyedRecord(b"acct-big", _event("reads-state", "app_install")),  # its snapshot: that consent
    ]
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        "internal.events",
        "hostile",
        extra_env={"PARTNER_GUARD_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES)},
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, "internal.events", inputs)
        wait_consumed(guard, len(inputs))
        guard_invalid_state = guard.metric_value("partner_guard_state_invalid_records_total")
    finally:
        assert guard.stop() == 0, guard.log()
    blocked = read_topic(broker.bootstrap, "guard.blocked", expect=len(inputs))
    assert len(blocked) == len(inputs)  # one blocked record per input ...
    for key, value, headers in blocked:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        assert size <= MAX_RECORD_BYTES
    records = [view for _, value, _ in blocked for view in partner_views(orjson.loads(value or b""))]
    assert len(records) == 2 * len(inputs)  # ... listing both partners: every input blocked for both
    big_key = [r for r in records if r["event_id"] == "big-key"]
    assert big_key and all(
        r["source"]["key_b64"] is None and r["source"]["key_size"] == 500_000 for r in big_key
    )
    # an event id of 250,000 characters is malformed (ids are at most 128), and its blocked
    # record, too large with the original, is reduced
    big_id = [r for r in records if r["event_id"] is None and r["original_size"] > 250_000]
    assert len(big_id) == 2 and all(r["reduced"] and "record_too_large" in r["reasons"] for r in big_id)
    assert all("malformed" in r["reasons"] for r in big_id)
    assert all(r["original_b64"] is None and r["snapshot"] is None for r in big_id)
    stored = [c for r in records if r["event_id"] == "reads-state" for c in r["snapshot"]["consent"]]
    assert stored and all(c["interest_based_ads"] == "denied" and c["updated_at"] is None for c in stored)
    assert guard_invalid_state >= 1
