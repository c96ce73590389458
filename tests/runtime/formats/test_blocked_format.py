"""The hot path's shortcuts keep every promise: the envelope gate, blocked records v2, replay of v1 and v2."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from streams.audit.replay import verify_one
from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import decode_json, decode_json_gated
from streams.core.decide import decide, receivable_types
from streams.core.models import Decision, Envelope, Malformed, StateSnapshot
from streams.core.rules.ruleset import Ruleset
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import (
    BLOCKED_FORMAT,
    BLOCKED_FORMAT_V1,
    SourceRef,
    Withheld,
    blocked_input,
    blocked_record,
    partner_views,
)
from tests.conftest import RULES_DIR
from tests.hostile import hostile_case

PLAY = {
    "event_id": "ev-play-1",
    "event_type": "playback_started",
    "event_time": 1795000000000,
    "device": {"platform": "web", "limit_ad_tracking": "not a bool"},  # invalid for the full model
    "properties": {"title_name": "Dark"},
}
SOURCE = SourceRef("internal.events", 2, 41, 1795000000123, b"acct-1", "json")


def _decisions(record: Any, ruleset: Ruleset) -> list[Decision]:
    return decide(record, StateSnapshot(), ruleset)


def test_an_event_no_rule_receives_is_read_only_as_far_as_its_envelope(ruleset: Ruleset) -> None:
    raw = orjson.dumps(PLAY)
    assert isinstance(decode_json(raw), Malformed)  # full validation rejects the device
    gated = decode_json_gated(raw, receivable_types(ruleset))
    assert gated == Envelope(event_id="ev-play-1", event_type="playback_started")
    assert [(d.verdict, d.reasons) for d in _decisions(gated, ruleset)] == [
        ("block", ("event_type_not_allowed",))
    ] * len(ruleset.rules)


def test_an_event_some_rule_receives_is_validated_in_full(ruleset: Ruleset) -> None:
    raw = orjson.dumps(dict(PLAY, event_type="app_install"))
    gated = decode_json_gated(raw, receivable_types(ruleset))
    assert isinstance(gated, Malformed) and "device.limit_ad_tracking" in gated.error


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b"[1,2]", b'{"event_type":"search"}', b'{"event_id":"x","event_type":7}', b"\xff"],
)
def test_input_without_a_valid_envelope_is_malformed(ruleset: Ruleset, raw: bytes) -> None:
    gated = decode_json_gated(raw, receivable_types(ruleset))
    assert isinstance(gated, Malformed)
    assert all(d.reasons == ("malformed",) for d in _decisions(gated, ruleset))


def test_an_envelope_of_a_type_a_rule_receives_fails_closed(ruleset: Ruleset) -> None:
    decisions = _decisions(Envelope(event_id="e", event_type="app_install"), ruleset)
    assert all(d.verdict == "block" for d in decisions)
    assert any(d.reasons == ("internal_error",) for d in decisions)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_case())
def test_the_gate_never_changes_what_is_forwarded(ruleset: Ruleset, case: dict[str, Any]) -> None:
    """Gated or fully validated: the same forwards, byte for byte; a gated block stays a block."""
    raw = orjson.dumps(case)
    full = _decisions(decode_json(raw), ruleset)
    gated = _decisions(decode_json_gated(raw, receivable_types(ruleset)), ruleset)
    for before, after in zip(full, gated, strict=True):
        assert after.verdict == before.verdict
        assert orjson.dumps(after.record) == orjson.dumps(before.record)


def _v2(ruleset: Ruleset, raw: bytes, max_bytes: int = 900_000) -> dict[str, Any]:
    record = decode_json_gated(raw, receivable_types(ruleset))
    event_id = record.event_id if isinstance(record, Envelope) else None
    shared = blocked_input(SOURCE, raw, None, event_id, PayloadProtector("full"))
    _, value, headers = blocked_record(
        [Withheld.of(d) for d in _decisions(record, ruleset)], shared, SOURCE, max_bytes
    )
    assert dict(headers)["pg-partners"] == ",".join(ruleset.partners).encode()
    blocked: dict[str, Any] = orjson.loads(value)
    return blocked


def test_one_blocked_record_per_input_lists_every_withholding_partner(ruleset: Ruleset) -> None:
    blocked = _v2(ruleset, orjson.dumps(PLAY))
    assert blocked["format"] == BLOCKED_FORMAT and blocked["event_id"] == "ev-play-1"
    assert [d["partner"] for d in blocked["decisions"]] == list(ruleset.partners)
    views = partner_views(blocked)
    assert [v["partner"] for v in views] == list(ruleset.partners)
    assert all(v["reasons"] == ["event_type_not_allowed"] and v["source"]["offset"] == 41 for v in views)
    assert partner_views(views[0]) == [views[0]]  # a view (or a v1 record) is its own view


def test_a_reduced_record_adds_record_too_large_to_every_decision(ruleset: Ruleset) -> None:
    raw = orjson.dumps(dict(PLAY, properties={"row": "x" * 20_000}))
    blocked = _v2(ruleset, raw, max_bytes=10_000)
    assert blocked["reduced"] and blocked["original_b64"] is None
    assert all(d["reasons"][-1] == "record_too_large" for d in blocked["decisions"])


def _v1_views(ruleset: Ruleset, raw: bytes) -> list[dict[str, Any]]:
    """Blocked records as the v1 writer made them: one per partner, input validated in full."""
    return [
        {
            "format": BLOCKED_FORMAT_V1,
            "partner": d.partner,
            "rule_id": d.rule_id,
            "ruleset_digest": d.ruleset_digest,
            "reasons": list(d.reasons),
            "details": list(d.details),
            "event_id": d.event_id,
            "snapshot": None,
            "source": {"topic": "internal.events", "partition": 0, "offset": 1, "format": "json"},
            "payload_mode": "full",
            "original_b64": base64.b64encode(raw).decode(),
            "original_size": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "reduced": False,
        }
        for d in _decisions(decode_json(raw), ruleset)
    ]


@pytest.fixture(scope="module")
def library() -> RulesetLibrary:
    return RulesetLibrary([Path(RULES_DIR)])


def test_replay_verifies_both_formats_as_decoded(ruleset: Ruleset, library: RulesetLibrary) -> None:
    raw = orjson.dumps(PLAY)
    v1 = _v1_views(ruleset, raw)
    v2 = partner_views(_v2(ruleset, raw))
    assert {tuple(v["reasons"]) for v in v1} == {("malformed",)}
    assert {tuple(v["reasons"]) for v in v2} == {("event_type_not_allowed",)}
    for view in (*v1, *v2):
        outcome = verify_one(view, library, None)
        assert outcome.status == "match", (view["format"], outcome.why)


def test_replay_still_catches_a_forged_v2_decision(ruleset: Ruleset, library: RulesetLibrary) -> None:
    blocked = _v2(ruleset, orjson.dumps(PLAY))
    blocked["decisions"][1]["reasons"] = ["consent_gpc"]
    outcomes = [verify_one(v, library, None) for v in partner_views(blocked)]
    assert [o.status for o in outcomes] == ["match", "mismatch"]
    blocked["decisions"] = []
    assert [verify_one(v, library, None).status for v in partner_views(blocked)] == ["invalid_record"]
