"""Checks over the whole ruleset, not one rule at a time (`rules check`, P2/P6/P11).

Every output topic belongs to exactly one partner; jurisdictions are ISO 3166 codes as the
data names them (a code the guard cannot place is the strictest jurisdiction); a condition
may not test the presence of a record that holds protected fields.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.core.consent import effective_consent
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.rules.loader import RulesetError, load_ruleset
from tests.conftest import RULES_DIR
from tests.core.test_rules_loader import BASE_RULE

OTHER_RULE = BASE_RULE.replace("partner: acme", "partner: zeta")


def _two_rules(tmp_path: Path, first: str, second: str) -> Path:
    shutil.copy(RULES_DIR / "_leak-scan.yaml", tmp_path / "_leak-scan.yaml")
    (tmp_path / "acme.yaml").write_text(first)
    (tmp_path / "zeta.yaml").write_text(second)
    return tmp_path


def _problems(directory: Path, **kwargs: object) -> list[str]:
    with pytest.raises(RulesetError) as info:
        load_ruleset(directory, **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def _with_topic(rule: str, topic: str) -> str:
    return rule.replace("jurisdictions:", f"topic: {topic}\njurisdictions:", 1)


@pytest.mark.parametrize(
    ("first", "second", "where", "expected"),
    [
        # zeta writes to acme's default topic: acme would read zeta's records
        (BASE_RULE, _with_topic(OTHER_RULE, "partner.acme.events"), "zeta.yaml:2:", "partner 'acme'"),
        # both name one explicit topic
        (
            _with_topic(BASE_RULE, "shared.out"),
            _with_topic(OTHER_RULE, "shared.out"),
            "zeta.yaml:2:",
            "partner 'acme'",
        ),
        # Kafka cannot tell `.` from `_` in topic names
        (
            _with_topic(BASE_RULE, "shared.out"),
            _with_topic(OTHER_RULE, "shared_out"),
            "zeta.yaml:2:",
            "partner 'acme'",
        ),
        # another partner's default topic, even before that partner has a rule
        (BASE_RULE, _with_topic(OTHER_RULE, "partner.omega.events"), "zeta.yaml:2:", "of partner 'omega'"),
    ],
)
def test_two_partners_never_share_an_output_topic(
    tmp_path: Path, first: str, second: str, where: str, expected: str
) -> None:
    problems = _problems(_two_rules(tmp_path, first, second))
    assert any(where in p and expected in p and "— fix: " in p for p in problems), problems


def test_distinct_topics_load(tmp_path: Path) -> None:
    ruleset = load_ruleset(_two_rules(tmp_path, BASE_RULE, _with_topic(OTHER_RULE, "zeta.feed")))
    assert [r.topic for r in ruleset.rules] == ["partner.acme.events", "zeta.feed"]


def test_a_topic_colliding_with_a_configured_guard_topic_is_refused(tmp_path: Path) -> None:
    directory = _two_rules(tmp_path, _with_topic(BASE_RULE, "guard_blocked"), OTHER_RULE)
    problems = _problems(directory, reserved_topics={"guard.blocked": "the blocked-event topic"})
    assert any("acme.yaml:2:" in p and "blocked-event topic" in p for p in problems), problems


@pytest.mark.parametrize(
    ("codes", "line", "expected"),
    [
        ("[US, UK]", 2, "did you mean 'GB'?"),  # the common mistake: UK is not ISO 3166-1
        ("[US, USA]", 2, "did you mean 'US'?"),
        ("[US, XX]", 2, "not an ISO 3166-1 country code"),
        ("[US-CA]", 2, "list the country ('US')"),
        ("[us]", 2, "write 'US'"),
        ("\n  - US\n  - UK", 4, "did you mean 'GB'?"),
    ],
)
def test_jurisdictions_are_checked_against_iso_3166(
    tmp_path: Path, codes: str, line: int, expected: str
) -> None:
    rule = BASE_RULE.replace("jurisdictions: [US]", f"jurisdictions: {codes}")
    problems = _problems(_two_rules(tmp_path, rule, OTHER_RULE))
    assert any(f"acme.yaml:{line}:" in p and expected in p for p in problems), problems


@pytest.mark.parametrize("codes", ["[US, CA, GB, DE]", "[EEA]", "[EU]"])
def test_real_codes_load(tmp_path: Path, codes: str) -> None:
    rule = BASE_RULE.replace("jurisdictions: [US]", f"jurisdictions: {codes}")
    rule += "consent:\n  tcf: {vendor_id: 755}\n"
    assert load_ruleset(_two_rules(tmp_path, rule, OTHER_RULE)).rule("acme")


def _event(country: str | None) -> Event:
    context = {"country": country} if country is not None else {}
    return Event.model_validate(
        {
            "event_id": "e1",
            "event_type": "app_install",
            "event_time": 1,
            "account_id": "a1",
            "context": context,
        }
    )


@pytest.mark.parametrize("country", ["UK", "XX", "EL", "U S", "ZZZ"])
def test_a_country_the_guard_cannot_place_is_the_strictest_jurisdiction(country: str) -> None:
    consent = effective_consent(_event(country), StateSnapshot())
    assert consent.gdpr_applies


@pytest.mark.parametrize("jurisdiction", ["US-ZZ", "UK", "XX-1"])
def test_a_stored_jurisdiction_the_guard_cannot_place_is_the_strictest(jurisdiction: str) -> None:
    record = ConsentRecord(subject="account:a1", jurisdiction=jurisdiction)
    consent = effective_consent(_event("US"), StateSnapshot(consent=(record,)))
    assert consent.gdpr_applies


@pytest.mark.parametrize(("country", "gdpr"), [("US", False), ("us", False), ("DE", True), ("GB", True)])
def test_known_countries_are_placed(country: str, gdpr: bool) -> None:
    assert effective_consent(_event(country), StateSnapshot()).gdpr_applies is gdpr


def test_a_known_subdivision_is_placed_by_its_country() -> None:
    record = ConsentRecord(subject="account:a1", jurisdiction="US-CA")
    assert not effective_consent(_event("US"), StateSnapshot(consent=(record,))).gdpr_applies


def test_a_notice_topic_is_checked_across_partners_with_its_line(tmp_path: Path) -> None:
    notices = "optout_notices: {kinds: [opt_out, deletion], topic: partner.acme.events}\n"
    problems = _problems(_two_rules(tmp_path, BASE_RULE, OTHER_RULE + notices))
    assert any("zeta.yaml:8:" in p and "also written by partner 'acme'" in p for p in problems), problems
    notices = "optout_notices: {kinds: [opt_out, deletion], topic: partner.omega.optouts}\n"
    problems = _problems(_two_rules(tmp_path, BASE_RULE, OTHER_RULE + notices))
    assert any("zeta.yaml:8:" in p and "default topic of partner 'omega'" in p for p in problems), problems
