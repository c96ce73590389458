"""Property tests: promises P1–P4, P6 and P7 hold for the shipped rules on hostile input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.codec import decode_avro, encode_avro
from streams.core.models import Decision
from streams.core.rules.model import CONTENT_EVENT_TYPES
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import event_schema
from streams.offline.cases import decide_case, decide_line
from tests.conftest import permissive_ruleset
from tests.hostile import FORBIDDEN_TOKENS, hostile_case, opt_out_case

PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RAW_IDENTIFIERS = ("acct-000123", "acct-000777", "acct-000123-p1", "dev-acct-000123", "321000-tcca")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def _readable(text: str) -> str:
    out = text.lower()
    for _ in range(4):
        out = unquote(out)
    return out.replace("-", " ").replace("_", " ")


def _assert_clean(decision: Decision, ruleset: Ruleset, event_type: str) -> None:
    if not decision.forwarded:
        assert decision.record is None and decision.reasons
        return
    rule = ruleset.rule(decision.partner)
    assert event_type in rule.events and event_type not in CONTENT_EVENT_TYPES  # P2
    record = decision.record or {}
    allowed = {f.name for f in rule.events[event_type].fields}
    assert set(record) <= allowed  # default deny
    for value in record.values():
        assert isinstance(value, str | int | float | bool)  # never nested: no watch-history shapes
    for text in _strings(record):
        readable = _readable(text)
        for token in FORBIDDEN_TOKENS:  # P1 and P6: no content, URL, search, raw email/phone/IP
            assert _readable(token) not in readable, (decision.partner, text, token)
        for raw in RAW_IDENTIFIERS:  # P6: internal ids leave only as pseudonyms
            assert raw not in text.lower()


@PROPERTY_SETTINGS
@given(hostile_case())
def test_p1_p2_p6_nothing_forbidden_is_forwarded(ruleset: Ruleset, case: dict[str, Any]) -> None:
    decisions = decide_case(case, orjson.dumps(case), ruleset)
    assert [d.partner for d in decisions] == list(ruleset.partners)  # P5: one decision per partner
    for decision in decisions:
        _assert_clean(decision, ruleset, case["event"]["event_type"])


@PROPERTY_SETTINGS
@given(opt_out_case())
def test_p3_p4_every_opt_out_and_child_signal_blocks(
    ruleset: Ruleset, case_kind: tuple[dict[str, Any], str]
) -> None:
    case, kind = case_kind
    decisions = decide_case(case, orjson.dumps(case), ruleset)
    for decision in decisions:
        assert decision.verdict == "block", (kind, decision)
        assert decision.reasons


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_p5_arbitrary_bytes_block_every_partner(ruleset: Ruleset, raw: bytes) -> None:
    decisions = decide_line(raw, ruleset)
    assert len(decisions) == len(ruleset.partners)
    for decision in decisions:
        assert decision.reasons
        assert decision.forwarded is False or decision.record is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_case())
def test_p7_same_input_same_decision_bytes(ruleset: Ruleset, case: dict[str, Any]) -> None:
    raw = orjson.dumps(case)
    first = [
        orjson.dumps(d, option=orjson.OPT_PASSTHROUGH_DATACLASS, default=_as_dict)
        for d in decide_line(raw, ruleset)
    ]
    second = [
        orjson.dumps(d, option=orjson.OPT_PASSTHROUGH_DATACLASS, default=_as_dict)
        for d in decide_line(raw, ruleset)
    ]
    assert first == second


def _as_dict(decision: Decision) -> dict[str, Any]:
    return {s: getattr(decision, s) for s in decision.__slots__}


def test_avro_and_json_give_the_same_decisions(ruleset: Ruleset) -> None:
    from streams.core.codec import decode_json
    from streams.core.decide import decide
    from streams.core.models import ConsentRecord, StateSnapshot

    event = {
        "event_id": "e-9",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:00:00Z",
        "account_id": "acct-9",
        "device": {"platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "US", "ip": "203.0.113.9"},
        "properties": {"campaign_id": "winter"},
    }
    snapshot = StateSnapshot(consent=(ConsentRecord(subject="account:acct-9", interest_based_ads="granted"),))
    from_avro = decode_avro(encode_avro(event, event_schema()), event_schema())
    from_json = decode_json(orjson.dumps(event))
    assert decide(from_avro, snapshot, ruleset) == decide(from_json, snapshot, ruleset)
    assert decide(from_avro, snapshot, ruleset)[0].forwarded


def test_corrupt_avro_is_malformed(ruleset: Ruleset) -> None:
    from streams.core.models import Malformed

    assert isinstance(decode_avro(b"\x00\x00\x00\x00\x01\xff\xff\xff", event_schema()), Malformed)
    assert isinstance(decode_avro(b"{}", event_schema()), Malformed)
    assert isinstance(decode_avro(None, event_schema()), Malformed)


PERMISSIVE_FIELDS = """\
  {event_type}:
    fields:
      event_id: {{from: event_id, transform: pseudonym}}
      campaign_id: {{from: properties.campaign_id, max_length: 1024}}
      install_source: {{from: properties.install_source, max_length: 1024}}
      step: {{from: properties.step, max_length: 1024}}
      plan: {{from: properties.plan, max_length: 1024}}
      platform: {{from: device.platform, max_length: 1024}}
      country: {{from: context.country, max_length: 1024}}
      region: {{from: context.region, max_length: 1024}}
"""


def _permissive_ruleset(directory: Path) -> Ruleset:
    """A rule that keeps every untagged field as-is: no values, no patterns, only the length cap."""
    return permissive_ruleset(directory, PERMISSIVE_FIELDS)


def test_leak_scan_alone_keeps_p1_and_p6(tmp_path_factory: Any) -> None:
    """With projection made permissive (plain keep, no patterns), the scan is the only defense."""
    ruleset = _permissive_ruleset(tmp_path_factory.mktemp("permissive"))
    verdicts: Counter[str] = Counter()

    @PROPERTY_SETTINGS
    @given(hostile_case())
    def check(case: dict[str, Any]) -> None:
        (decision,) = decide_case(case, orjson.dumps(case), ruleset)
        verdicts[decision.reasons[0] if decision.reasons else "forward"] += 1
        _assert_clean(decision, ruleset, case["event"]["event_type"])

    check()
    assert verdicts.get("leak_detected", 0) > 0 and verdicts.get("forward", 0) > 0, verdicts


HOSTILE_PATHS = [
    ("event_time",),
    ("event_id",),
    ("account_id",),
    ("device", "device_id"),
    ("device", "limit_ad_tracking"),
    ("context", "country"),
    ("context", "consent", "gpc"),
    ("context", "consent", "tcf"),
    ("context", "consent", "gpp"),
    ("context", "consent", "us_privacy"),
    ("user", "kids_profile"),
    ("properties", "campaign_id"),
    ("properties", "install_source"),
]
hostile_scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 253_402_300_800_000, -62_135_596_800_001]),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "acct-000123\u200b", " x"]),
    st.none(),
)
hostile_json = st.recursive(
    hostile_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile_case(),
    st.lists(st.tuples(st.sampled_from(HOSTILE_PATHS), hostile_json), max_size=3),
    st.booleans(),
)
def test_p5_type_swaps_huge_numbers_and_duplicates_never_raise(
    ruleset: Ruleset, case: dict[str, Any], swaps: list[tuple[tuple[str, ...], Any]], duplicate: bool
) -> None:
    """Whatever a field holds, every partner gets exactly one decision, and forwards serialize."""
    for path, value in swaps:
        node = case["event"]
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part), dict | None) else {}
        node[path[-1]] = value
    line = json.dumps(case).encode()  # the standard library writes what orjson cannot (2**80, NaN)
    if duplicate:  # the same key twice: the guard must not pick the value it likes
        line = line[:-1] + b',"event":{"event_id":"x","event_type":"app_open","event_time":1}}'
    decisions = decide_line(line, ruleset)
    assert [d.partner for d in decisions] == list(ruleset.partners)
    for decision in decisions:
        assert decision.forwarded or decision.reasons
        if duplicate:
            assert decision.reasons == ("malformed",)
        orjson.dumps(decision.record)
