"""`replay forwarded`'s checks, apart from Kafka: the projection at the recorded digest, the leak
re-scan, conservation (Hypothesis), and hostile partner records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.audit.forwarded import (
    ForwardedRecord,
    check_projection,
    check_record,
    conserve,
    parse_record,
    rescan,
)
from streams.audit.rulesets import RulesetLibrary, with_replay_keys
from streams.core.rules.loader import load_ruleset
from streams.offline.cases import decide_case
from streams.offline.scaffold import base_inputs
from tests.conftest import RULES_DIR

RULESET = with_replay_keys(load_ruleset(RULES_DIR))
PARTNER = "install-attribution"
TOPIC = "partner.install-attribution.events"


def _genuine() -> dict[str, Any]:
    rule = RULESET.rule(PARTNER)
    inputs = base_inputs(rule, "app_install")
    decision = decide_case(inputs, orjson.dumps(inputs), RULESET)[RULESET.partners.index(PARTNER)]
    assert decision.forwarded and decision.record
    return dict(decision.record)


def _record(value: Any, **headers: str) -> ForwardedRecord:
    given_headers = {"pg-ruleset-digest": RULESET.digest, "pg-rule-id": "install-attribution-v1"} | headers
    raw = [(k, v.encode()) for k, v in given_headers.items()]
    return parse_record(PARTNER, TOPIC, 0, 7, 1, orjson.dumps(value), raw)


def test_a_genuine_record_matches_its_rule_and_names_each_transform() -> None:
    record = _record(_genuine())
    assert check_projection(record, RULESET) is None and not rescan(record, RULESET)
    assert record.event_type == "app_install"
    assert record.fields["event_id"] == "pseudonym" and record.fields["event_hour"] == "coarsened time"
    assert record.fields["ad_id"] == "ad id" and record.fields["campaign_id"] == "kept"


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({"title_name": "Dark"}, "field title_name not in the rule"),
        ({"event_id": "ev-raw-1"}, "event_id: not a pseudonym digest"),
        ({"event_hour": "2026-11-28T10:42:00Z"}, "event_hour: not on its hour"),
        ({"campaign_id": "https://evil.example/x"}, "campaign_id: pattern_mismatch"),
        ({"platform": "tv"}, "platform: value_not_allowed"),
        ({"ad_id": "00000000-0000-0000-0000-000000000000"}, "ad_id: a zeroed ad id"),
        ({"country": None}, "required country missing"),
    ],
)
def test_a_record_its_rule_could_not_produce_is_named(change: dict[str, Any], found: str) -> None:
    value = {k: v for k, v in ({**_genuine(), **change}).items() if v is not None}
    assert check_projection(_record(value), RULESET) == f"app_install: {found}"


def test_headers_must_name_the_rule_and_its_digest(tmp_path: Path) -> None:
    library = RulesetLibrary([RULES_DIR])
    wrong_rule = check_record(_record(_genuine(), **{"pg-rule-id": "other-v9"}), RULESET, library)
    assert wrong_rule.projection and "other-v9" in wrong_rule.projection
    lost = check_record(_record(_genuine(), **{"pg-ruleset-digest": "sha256:" + "0" * 64}), RULESET, library)
    assert lost.unverified and "not found" in lost.unverified and lost.projection is None
    bare = parse_record(PARTNER, TOPIC, 0, 1, None, orjson.dumps(_genuine()), [])
    assert check_record(bare, RULESET, library).unverified  # never counted as passing


def test_the_leak_rescan_reads_keys_and_values_and_hostile_records_never_raise() -> None:
    assert any(
        "url" in f for f in rescan(_record({**_genuine(), "campaign_id": "https://x.example/t"}), RULESET)
    )
    assert rescan(_record([1, 2]), RULESET) == ["record: not_a_json_object"]
    hostile = parse_record(
        PARTNER,
        TOPIC,
        0,
        1,
        None,
        b"\xff\xfe{",
        [("pg-source-offset", b"\xff"), ("pg-source-partition", b"-1")],
    )
    checked = check_record(hostile, RULESET, RulesetLibrary([RULES_DIR]))
    assert checked.source is None and checked.leaks == ["record: not_a_json_object"]
    deep = {"a": [[{"b": "c"}]] * 3, "campaign_id": "x" * 100_000}
    assert rescan(_record(deep), RULESET)  # nested values are findings, never a crash


positions = st.lists(
    st.tuples(st.sampled_from(["in.a", "in.b"]), st.integers(0, 2), st.integers(0, 50)),
    unique=True,
    max_size=30,
)


@given(positions, st.data())
def test_conservation_finds_exactly_the_missing_duplicated_and_orphan_outputs(
    inputs: list[Any], data: st.DataObject
) -> None:
    partners = ("p1", "p2")
    forwarded: list[Any] = []
    blocked: list[Any] = []
    for position in inputs:  # each input once per partner, forwarded or blocked
        for partner in partners:
            if data.draw(st.booleans()):
                forwarded.append((partner, position))
            else:
                blocked.append((partner, position, "d"))
    held = {(t, p): (0, 100) for t in ("in.a", "in.b") for p in range(3)}
    stamps = dict.fromkeys(inputs, 1)
    clean = conserve(stamps, held, forwarded, blocked, lambda _d: partners, partners)
    assert clean.level == ("green" if inputs else "amber") and clean.checked_pairs == 2 * len(inputs)
    if not inputs:
        return
    lost = data.draw(st.sampled_from(inputs))
    fewer = [f for f in forwarded if f != ("p1", lost)]
    fewer_blocked = [b for b in blocked if b[:2] != ("p1", lost)]
    missing = conserve(stamps, held, fewer, fewer_blocked, lambda _d: partners, partners)
    assert missing.missing == [(lost, "p1")] and missing.level == "red"
    twice = conserve(stamps, held, [*forwarded, ("p2", lost)], blocked, lambda _d: partners, partners)
    assert twice.duplicated == [(lost, "p2", 2)]
    forged = conserve(
        stamps, held, [*forwarded, ("p1", ("in.a", 0, 999))], blocked, lambda _d: partners, partners
    )
    assert forged.orphans == [("p1", ("in.a", 0, 999))] and forged.level == "red"
    unplaced = conserve(stamps, held, [*forwarded, ("p1", None)], blocked, lambda _d: partners, partners)
    assert unplaced.unplaced == 1 and unplaced.level == "amber"  # never green, still checked
    # an output without headers cannot hide a duplicate, and turns a missing pair amber, not green
    hidden = conserve(stamps, held, [*fewer, ("p1", None)], fewer_blocked, lambda _d: partners, partners)
    assert hidden.missing == [(lost, "p1")] and hidden.level == "amber"
    both = conserve(
        stamps, held, [*forwarded, ("p2", lost), ("p1", None)], blocked, lambda _d: partners, partners
    )
    assert both.level == "red"


def test_findings_about_hostile_keys_are_bounded() -> None:
    library = RulesetLibrary([RULES_DIR])
    many = {**_genuine(), **{f"k{i}-" + "x" * 5000: f"https://e.example/{i}" for i in range(100)}}
    checked = check_record(_record(many), RULESET, library)
    assert len(checked.leaks) == 21 and checked.leaks[-1].startswith("and ")
    assert all(len(f) <= 300 for f in checked.leaks) and checked.projection and len(checked.projection) <= 600
    deep: Any = "v"
    for _ in range(250):
        deep = {"k": deep}
    nested = check_record(_record({**_genuine(), "campaign_id": deep}), RULESET, library)
    assert nested.leaks and nested.projection  # flagged, never a crash
