"""Replay decodes an Avro original with the job's own decoding (`decode_input`, same settings)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.audit.replay import UNCONFIGURED_AVRO, replay
from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import encode_avro
from streams.core.decide import decide, receivable_types
from streams.core.models import StateSnapshot
from streams.core.rules.loader import load_ruleset
from streams.core.schema import event_schema, event_schema_fingerprint
from streams.runtime.config import Settings, load_settings
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import SourceRef, Withheld, blocked_input, blocked_record, partner_views
from streams.runtime.kafka.avro_input import ReplayAvro, avro_decoder, decode_input
from tests.conftest import RULES_DIR, TEST_KEYS

EVENT = {
    "event_id": "av-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-av",
    "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
    "context": {"country": "US"},
    "properties": {"campaign_id": "spring"},
}
PINNED_ID = 3


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The job's settings: Avro input pinned to writer schema id 3 (the guard's own)."""
    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("PARTNER_GUARD_INPUT_FORMATS", "internal.events=avro")
    monkeypatch.setenv("PARTNER_GUARD_AVRO_SCHEMA_ID", str(PINNED_ID))
    monkeypatch.setenv("PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT", event_schema_fingerprint())
    return load_settings()


def _as_the_job_blocked_it(raw: bytes, settings: Settings) -> list[dict[str, Any]]:
    """Decode and decide as `run` does, and the blocked record's per-partner views."""
    ruleset = load_ruleset(RULES_DIR).with_keys(TEST_KEYS)
    record = decode_input(raw, "avro", avro_decoder(settings), receivable_types(ruleset))
    withheld = [Withheld.of(d) for d in decide(record, StateSnapshot(), ruleset) if not d.forwarded]
    source = SourceRef("internal.events", 0, 5, 1_795_000_000_000, b"acct-av", "avro")
    shared = blocked_input(source, raw, StateSnapshot(), "av-1", PayloadProtector("full"))
    _, value, _ = blocked_record(withheld, shared, source, 900_000)
    return partner_views(orjson.loads(value))


def test_a_record_under_another_id_than_the_pinned_one_verifies_as_the_job_blocked_it(
    pinned: Settings,
) -> None:
    raw = encode_avro(EVENT, event_schema(), PINNED_ID + 1)  # the job never decodes it by position
    views = _as_the_job_blocked_it(raw, pinned)
    assert {tuple(v["reasons"]) for v in views} == {("schema_unknown",)}

    verified = replay(views, RulesetLibrary([RULES_DIR]), None, avro=ReplayAvro(pinned))
    assert {o.status for o in verified.outcomes} == {"match"}
    # read as today's schema under any id (no settings), the record is re-decided: never a false match
    unconfigured = replay(views, RulesetLibrary([RULES_DIR]), None, avro=ReplayAvro(None))
    assert {o.status for o in unconfigured.outcomes} == {"mismatch"}
    assert all(o.why.endswith(f"({UNCONFIGURED_AVRO})") for o in unconfigured.outcomes)


def test_a_record_under_the_pinned_id_verifies(pinned: Settings) -> None:
    views = _as_the_job_blocked_it(encode_avro(EVENT, event_schema(), PINNED_ID), pinned)
    assert views and all(v["reasons"] for v in views)

    verified = replay(views, RulesetLibrary([RULES_DIR]), None, avro=ReplayAvro(pinned))

    assert {o.status for o in verified.outcomes} == {"match"}
