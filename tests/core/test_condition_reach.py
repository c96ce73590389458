"""P11 at `rules check`: a condition may read only fields partners may learn about.

What a condition can read is resolved from its syntax tree (`celreach`), through every
construct the allowed CEL subset has; a construct whose reach cannot be resolved is refused.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.rules.celreach import CelSubsetError, reach
from streams.core.rules.condition import Condition
from streams.core.rules.loader import RulesetError, load_ruleset
from tests.core.test_rules_loader import BASE_RULE, _rules_dir

CONDITION_LINE = "acme.yaml:8:"


def _refusals(tmp_path: Path, condition: str) -> list[str]:
    rule = BASE_RULE + f"condition: {orjson.dumps(condition).decode()}\n"
    with pytest.raises(RulesetError) as info:
        load_ruleset(_rules_dir(tmp_path, rule))
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # the example: a partner would learn about URLs from which installs arrive
        ('has(event.context.page_url) && event.context.page_url.contains("stranger")', "tagged 'url'"),
        ("has(event.context.referrer_url)", "presence of event.context.referrer_url, tagged 'url'"),
        ('event["context"]["page_url"] == ""', "tagged 'url'"),
        ('event.properties.title_name == "Dark"', "tagged 'content'"),
        ('event.properties["search_query"].startsWith("a")', "tagged 'search'"),
        ("size(event.properties.watch_history) > 2", "tagged 'content'"),
        ('[1].exists(x, event.properties.title_id == "1")', "tagged 'content'"),
        ('true ? event.user.email.endsWith("@x.com") : false', "tagged 'pii:email'"),
        ('event.context.ip.startsWith("10.")', "tagged 'pii:ip'"),
        ('event.context.user_agent.contains("iPhone")', "tagged 'pii:fingerprint'"),
        ("event.context.consent.gpc == false", "tagged 'consent'"),
        ("has(event.context.consent)", "tagged 'consent'"),
        ("event.device.limit_ad_tracking == false", "tagged 'consent'"),
        ('size(event.context) > 3 || event.device.platform == "ios"', "reaching context.consent"),
        # presence is information: a record is there when any protected member of it is
        ("has(event.user)", "presence of event.user, a record holding user.email, user.phone"),
        ("!has(event.properties)", "presence of event.properties, a record holding properties.position_ms"),
        (
            'has(event.context) || status == "member"',
            "presence of event.context, a record holding context.ip",
        ),
        ('"title_id" in event.properties', "whole record event.properties (its value, size or keys)"),
        ("size(event.user) == 0", "whole record event.user (its value, size or keys)"),
        ('event.properties.favourite_show == "x"', "does not declare"),
        ('event.device.platform.kind == "x"', "does not declare"),
        ("size(event) > 0", "whole event"),
        ('["page_url"].exists(k, event.context[k] == "x")', "computed key"),
        ('event.properties[status] == "x"', "computed key"),
        ('event.properties.watch_history.exists(t, t == "x")', "list written in the rule"),
        ('event.device.platform.matches("i.*")', "may not use"),
        ('{"a": event.context.page_url}.a == ""', "not valid CEL here"),
    ],
)
def test_condition_reading_a_protected_or_unknown_field_is_refused(
    tmp_path: Path, condition: str, expected: str
) -> None:
    problems = _refusals(tmp_path, condition)
    assert any(CONDITION_LINE in p and expected in p and "— fix: " in p for p in problems), problems


@pytest.mark.parametrize(
    "condition",
    [
        'has(event.device) && has(event.device.platform) && event.device.platform in ["ios", "android"]',
        'event.properties["campaign_id"].startsWith("spring") || event.context.country == "US"',
        '["ios", "tv"].exists(p, p == event.device.platform) && consent.jurisdiction != "EU"',
        'has(event.context.country) && event.user.age_band == "adult" && status == "prospect"',
        'event.account_id.startsWith("test-") == false && size(event.event_type) < 40',
    ],
)
def test_condition_reading_allowed_fields_loads(tmp_path: Path, condition: str) -> None:
    rule = BASE_RULE + f"condition: {orjson.dumps(condition).decode()}\n"
    assert load_ruleset(_rules_dir(tmp_path, rule)).rule("acme").condition is not None


def test_reach_resolves_paths_and_presence() -> None:
    resolved = reach('has(event.device) && event["context"].country == "US" && [1].all(x, x > 0)')
    assert resolved.values == {("context", "country")}
    assert resolved.presence == {("device",)}
    assert resolved.include() == {"device": {}, "context": {"country": True}}


def test_condition_is_handed_only_the_fields_it_reads() -> None:
    """Defense in depth: even a CEL engine bug cannot let an unread field influence the result."""
    condition = Condition('has(event.device) && event.context.country == "US"')
    seen: list[object] = []

    class Spy:
        def execute(self, context: object) -> bool:
            seen.append(context)
            return True

    condition._program = Spy()  # type: ignore[assignment]
    event = Event.model_validate(
        {
            "event_id": "e",
            "event_type": "app_install",
            "event_time": 1,
            "device": {"platform": "ios", "ad_id": "A"},
            "context": {"country": "US", "page_url": "https://x/title/1"},
            "properties": {"title_name": "Dark"},
        }
    )
    assert condition.holds(event, {}, "")
    assert seen == [{"event": {"device": {}, "context": {"country": "US"}}, "consent": {}, "status": ""}]


def test_unresolvable_reach_raises() -> None:
    with pytest.raises(CelSubsetError):
        reach("event.properties[event.event_type]")


def test_condition_over_an_allowed_field_decides(tmp_path: Path) -> None:
    rule = BASE_RULE + "condition: '[\"ios\"].exists(p, p == event.device.platform)'\n"
    ruleset = load_ruleset(_rules_dir(tmp_path, rule)).with_keys({"acme": b"k" * 32})
    snapshot = StateSnapshot(consent=(ConsentRecord(subject="account:a", interest_based_ads="granted"),))
    verdicts = []
    for platform in ("ios", "android"):
        event = {
            "event_id": "e",
            "event_type": "app_install",
            "event_time": 1,
            "account_id": "a",
            "device": {"platform": platform},
            "context": {"country": "US"},
        }
        verdicts.append(decide(decode_json(orjson.dumps(event)), snapshot, ruleset)[0].verdict)
    assert verdicts == ["forward", "block"]
