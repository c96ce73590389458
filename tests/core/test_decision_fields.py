"""What every decision carries, and what the leak scan is given, pinned where the core mutation
run (`make mutants`) found nothing checking it.

- every decision names its rule, the ruleset digest and the event: replay re-decides a
  blocked record under the ruleset its digest names (P7);
- the values the leak scan must never see leave include every key, string and number
  nested in a property tagged content or search (P1);
- `consults_state` is True exactly when some rule gets past the event-type check.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.core.decide import consults_state, decide, sensitive_values
from streams.core.leakscan import raw_values_of
from streams.core.models import ConsentRecord, Envelope, Event, Malformed, StateSnapshot
from streams.core.rules.ruleset import Ruleset

ACCOUNT = "acct-000123"
GRANTED = StateSnapshot(
    consent=(ConsentRecord(subject=f"account:{ACCOUNT}", interest_based_ads="granted", ad_cookies="granted"),)
)


def _event(**changes: Any) -> Event:
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "device": {"platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "US"},
        "properties": {"campaign_id": "spring"},
    }
    return Event.model_validate(event | changes)


CASES = {
    "forwarded": (_event(), GRANTED),
    "consent_missing": (_event(), StateSnapshot()),
    "stale": (_event(), StateSnapshot(consent=GRANTED.consent, stale=True)),
    "content_type": (_event(event_type="playback_started"), GRANTED),
    "malformed": (Malformed(b"{", "malformed"), StateSnapshot()),
    "envelope": (Envelope.model_construct(event_id="ev-2", event_type="title_selected"), StateSnapshot()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_decision_names_its_rule_the_ruleset_digest_and_the_event(ruleset: Ruleset, case: str) -> None:
    record, snapshot = CASES[case]
    decisions = decide(record, snapshot, ruleset)
    assert [d.partner for d in decisions] == [rule.partner for rule in ruleset.rules]
    expected_id = None if isinstance(record, Malformed) else record.event_id
    for decision, rule in zip(decisions, ruleset.rules, strict=True):
        assert decision.rule_id == rule.rule_id
        assert decision.ruleset_digest == ruleset.digest
        assert decision.event_id == expected_id
        assert decision.forwarded or decision.reasons  # a block always says why


def test_the_forwarded_case_really_forwards(ruleset: Ruleset) -> None:
    record, snapshot = CASES["forwarded"]
    assert any(d.forwarded for d in decide(record, snapshot, ruleset))


def test_every_nested_key_string_and_number_of_a_tagged_property_is_sensitive(ruleset: Ruleset) -> None:
    history = [{"s01e02": "Stranger Things", "minutes": 987654321}, "the crown", 31415926, True]
    event = _event(
        properties={"campaign_id": "spring", "watch_history": history, "search_query": "squid game"}
    )
    values = sensitive_values(event, ruleset.tags)
    nested = raw_values_of(["s01e02", "Stranger Things", "minutes", "987654321", "the crown", "31415926"])
    assert nested <= values
    assert raw_values_of(["squid game"]) <= values
    assert not raw_values_of(["spring"]) <= values  # an untagged property is no secret
    assert not raw_values_of(["True"]) <= values  # a flag is no value to look for


def test_consults_state_exactly_when_some_rule_receives_the_type(ruleset: Ruleset) -> None:
    receivable = {t for rule in ruleset.rules for t in rule.events}
    assert consults_state(_event(), ruleset)
    assert "app_install" in receivable
    assert not consults_state(_event(event_type="playback_started"), ruleset)
    assert not consults_state(Malformed(b"{", "malformed"), ruleset)
    assert not consults_state(Envelope.model_construct(event_id="e", event_type="app_install"), ruleset)
