"""The pure notice core (P12): markers, notice state, who gets which notice."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.notices import (
    CHOICES,
    ConsentChange,
    InvalidRecordError,
    Marker,
    NoticePlan,
    NoticeState,
    decide_notices,
    decode_marker,
    decode_state,
    forwarded_ids,
    marker_update,
    merge_markers,
    plans_of,
)
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from tests.conftest import RULES_DIR

DAY = 24 * 3600 * 1000
NOW = 1_800_000_000_000
LOOKBACK, REFRESH = 396 * DAY, DAY
DIGEST = "sha256:test"


def _marker(at_ms: int = NOW, **values: str) -> Marker:
    forms = {"external_id": "pseudonym", "em": "sha256_email", "ph": "sha256_phone", "ad_id": "ad_id"}
    return Marker(
        at_ms,
        {k: forms[k] for k in values},  # type: ignore[misc]
        {k: "ad_id" if k == "ad_id" else "person" for k in values},
        {k: (v,) for k, v in values.items()},
    )


PLANS = {
    "both": NoticePlan("both", "partner.both.optouts", frozenset({"opt_out", "deletion"}), {}),
    "deletions": NoticePlan("deletions", "partner.deletions.optouts", frozenset({"deletion"}), {}),
    "silent": NoticePlan("silent", "partner.silent.optouts", frozenset(), {}),
}


def _decide(change: ConsentChange, previous: NoticeState | None, markers: dict[str, Marker]):  # type: ignore[no-untyped-def]
    return decide_notices(change, previous, markers, PLANS, DIGEST, NOW, LOOKBACK, REFRESH)


def test_an_opt_out_reaches_only_partners_with_a_marker_in_their_identifiers() -> None:
    markers = {"both": _marker(external_id="pa", em="ea")}
    out = _decide(
        ConsentChange("account:a", "update", NOW, frozenset({"do_not_sell_or_share"})), None, markers
    )
    assert [(n.partner, n.kind, dict(n.identifiers)) for n in out.notices] == [
        ("both", "opt_out", {"external_id": ("pa",), "em": ("ea",)})
    ]
    assert out.state == NoticeState(NOW, frozenset({"do_not_sell_or_share"}))


def test_p10_an_ad_id_never_shares_a_notice_with_person_identifiers() -> None:
    markers = {"both": _marker(external_id="pa", ad_id="ad")}
    out = _decide(
        ConsentChange("account:a", "update", NOW, frozenset({"do_not_sell_or_share"})), None, markers
    )
    assert sorted(sorted(n.identifiers) for n in out.notices) == [["ad_id"], ["external_id"]]


def test_replays_repeats_and_a_new_opt_out_after_a_re_grant() -> None:
    markers = {"both": _marker(external_id="pa")}
    opted = NoticeState(NOW - 10, frozenset({"do_not_sell_or_share"}))
    repeat = ConsentChange("account:a", "update", NOW - 10, frozenset({"do_not_sell_or_share"}))
    assert _decide(repeat, opted, markers).notices == []  # the same record again
    later = ConsentChange("account:a", "update", NOW, frozenset({"do_not_sell_or_share"}))
    assert _decide(later, opted, markers).notices == []  # an identical opt-out, later
    regrant = _decide(ConsentChange("account:a", "update", NOW - 5, frozenset()), opted, markers)
    assert regrant.notices == [] and regrant.state == NoticeState(NOW - 5, frozenset())
    again = _decide(later, regrant.state, markers)
    assert [n.partner for n in again.notices] == ["both"]


def test_a_matched_identifier_opt_out_carries_only_the_hashed_identifiers() -> None:
    markers = {"both": _marker(external_id="pa", em="ea", ph="pa2")}
    out = _decide(
        ConsentChange("account:a", "update", NOW, frozenset({"matched_identifier_opt_out"})), None, markers
    )
    assert [sorted(n.identifiers) for n in out.notices] == [["em", "ph"]]


def test_a_deletion_notifies_who_asks_for_deletions_and_deletes_every_marker() -> None:
    markers = {p: _marker(external_id="pa") for p in PLANS}
    out = _decide(ConsentChange("account:a", "deletion", NOW), NoticeState(1, frozenset()), markers)
    assert [(n.partner, n.kind) for n in out.notices] == [("both", "deletion"), ("deletions", "deletion")]
    assert sorted(out.delete_markers) == sorted(PLANS)
    assert out.write_state and out.state is None  # the notice state goes too


def test_a_marker_older_than_the_window_gets_nothing_and_is_deleted() -> None:
    markers = {"both": _marker(NOW - LOOKBACK - REFRESH - 1, external_id="pa")}
    out = _decide(
        ConsentChange("account:a", "update", NOW, frozenset({"do_not_sell_or_share"})), None, markers
    )
    assert out.notices == [] and out.expired_markers == ["both"]
    edge = {"both": _marker(NOW - LOOKBACK, external_id="pa")}  # at the edge: still inside
    assert _decide(ConsentChange("account:a", "update", NOW, frozenset(CHOICES)), None, edge).notices


def test_marker_update_writes_only_what_changes() -> None:
    plan = plans_of(load_ruleset(RULES_DIR))["signup-conversions"]
    fields = plan.fields["signup_started"]
    ids = forwarded_ids({"external_id": "pa", "em": "ea", "event_id": "x", "country": "US"}, fields)
    assert [spec.name for spec, _ in ids] == ["external_id", "em"]  # never the event id or a kept field
    first = marker_update(None, ids, NOW, REFRESH)
    assert first is not None
    assert marker_update(first, ids, NOW + REFRESH - 1, REFRESH) is None  # nothing new: no write
    assert marker_update(first, ids, NOW + REFRESH, REFRESH) is not None  # refreshes its time
    other = forwarded_ids({"external_id": "pa", "em": "eb"}, fields)
    grown = marker_update(first, other, NOW + 1, REFRESH)
    assert grown is not None and grown.values["em"] == ("ea", "eb")


values = st.text(alphabet="abcdef0123456789", min_size=1, max_size=8)
markers_st = st.builds(
    lambda at, em, pa: Marker(
        at,
        {"em": "sha256_email", "external_id": "pseudonym"},
        {"em": "person", "external_id": "person"},
        {"em": tuple(em), "external_id": tuple(pa)},
    ),
    st.integers(0, NOW),
    st.lists(values, min_size=1, max_size=2, unique=True),
    st.lists(values, min_size=1, max_size=2, unique=True),
)


@given(st.lists(markers_st, min_size=1, max_size=4))
def test_markers_merge_to_the_same_values_in_any_order(found: list[Marker]) -> None:
    """Markers written by several instances add up the same whichever is read first (few values)."""
    forward, backward = None, None
    for marker in found:
        forward = merge_markers(forward, marker)
    for marker in reversed(found):
        backward = merge_markers(backward, marker)
    assert forward is not None and backward is not None
    assert forward.at_ms == backward.at_ms == max(m.at_ms for m in found)
    for name in ("em", "external_id"):
        seen = {v for m in found for v in m.values[name]}
        if len(seen) <= 4:
            assert set(forward.values[name]) == set(backward.values[name]) == seen


@given(markers_st)
def test_markers_and_states_survive_their_encoding(marker: Marker) -> None:
    assert decode_marker(marker.encode()) == marker
    state = NoticeState(marker.at_ms, frozenset(CHOICES[:2]))
    assert decode_state(state.encode()) == state


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"format":"partner-guard.forwarded.v1","at_ms":true,"ids":{}}',
        b'{"format":"partner-guard.forwarded.v1","at_ms":1,"ids":{"x":{"form":"raw","group":"person","values":[]}}}',
        b'{"format":"partner-guard.forwarded.v1","at_ms":1,"ids":{"x":{"form":"pseudonym","group":"person","values":["'
        + b"a" * 200
        + b'"]}}}',
    ],
)
def test_a_hostile_marker_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRecordError):
        decode_marker(raw)


def _rule(tmp_path: Path, notices: str) -> Ruleset:
    (tmp_path / "_leak-scan.yaml").write_text((RULES_DIR / "_leak-scan.yaml").read_text())
    text = (RULES_DIR / "signup-conversions.yaml").read_text() + notices
    (tmp_path / "signup-conversions.yaml").write_text(text)
    return load_ruleset(tmp_path)


def test_rules_check_refuses_a_rule_without_deletion_notices_unless_it_says_why(tmp_path: Path) -> None:
    with pytest.raises(RulesetError, match="gets no deletion notices"):
        _rule(tmp_path, "optout_notices: none\n")
    with pytest.raises(RulesetError, match="gets no deletion notices"):
        _rule(tmp_path, "optout_notices: {kinds: [opt_out]}\n")
    silent = _rule(
        tmp_path, "optout_notices: {kinds: none, reason: 'the partner keeps nothing (contract 4.2)'}\n"
    )
    assert plans_of(silent)["signup-conversions"].kinds == frozenset()
    custom = _rule(tmp_path, "optout_notices: {topic: conversions.optouts}\n")
    assert plans_of(custom)["signup-conversions"].topic == "conversions.optouts"


def test_the_default_leaves_the_ruleset_digest_as_it_was(tmp_path: Path) -> None:
    before = _rule(tmp_path, "").digest  # as written before notices existed
    assert _rule(tmp_path, "optout_notices: {kinds: [opt_out, deletion]}\n").digest == before
    assert _rule(tmp_path, "optout_notices: {kinds: [opt_out, deletion], topic: t.x}\n").digest != before


def test_a_notice_topic_can_never_be_another_partners_topic(tmp_path: Path) -> None:
    (tmp_path / "_leak-scan.yaml").write_text((RULES_DIR / "_leak-scan.yaml").read_text())
    (tmp_path / "install-attribution.yaml").write_text((RULES_DIR / "install-attribution.yaml").read_text())
    text = (RULES_DIR / "signup-conversions.yaml").read_text()
    (tmp_path / "signup-conversions.yaml").write_text(
        text + "optout_notices: {topic: partner.install-attribution.events}\n"
    )
    with pytest.raises(RulesetError, match="also written by partner 'install-attribution'"):
        load_ruleset(tmp_path)
    (tmp_path / "signup-conversions.yaml").write_text(
        text + "optout_notices: {topic: partner.signup-conversions.events}\n"
    )
    with pytest.raises(RulesetError, match="the rule's own event topic"):
        load_ruleset(tmp_path)


changes_st = st.lists(
    st.tuples(st.integers(1, 50), st.frozensets(st.sampled_from(CHOICES), max_size=2)),
    min_size=1,
    max_size=12,
)


@given(changes_st)
def test_notices_follow_new_opt_outs_once_and_a_replay_adds_none(
    steps: list[tuple[int, frozenset[str]]],
) -> None:
    """In time order, a notice for every change that adds an opt-out; the same records read
    again (a replay, a restart) add nothing."""
    markers = {"both": _marker(external_id="pa", em="ea")}
    state: NoticeState | None = None
    sent = 0
    expected, before, at = 0, frozenset[str](), 0
    for gap, choices in steps:
        at += gap
        expected += bool(choices - before)
        before = choices
        out = _decide(ConsentChange("account:a", "update", NOW - 10_000 + at, choices), state, markers)
        sent += sum(n.kind == "opt_out" and n.partner == "both" for n in out.notices)
        if out.write_state:
            state = out.state
    assert sent == expected
    at = 0
    for gap, choices in steps:  # the whole history again
        at += gap
        replayed = _decide(ConsentChange("account:a", "update", NOW - 10_000 + at, choices), state, markers)
        assert replayed.notices == [] and not replayed.write_state
