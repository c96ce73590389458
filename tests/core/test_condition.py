"""CEL conditions: true forwards, false and errors block (fail closed), results memoized safely."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import ConsentRecord, StateSnapshot
from streams.core.rules.loader import load_ruleset
from tests.core.test_rules_loader import BASE_RULE, _rules_dir

SNAPSHOT = StateSnapshot(consent=(ConsentRecord(subject="account:a", interest_based_ads="granted"),))


def _event(**properties: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": "e",
            "event_type": "app_install",
            "event_time": 1,
            "account_id": "a",
            "device": {"platform": "ios"},
            "context": {"country": "US"},
            "properties": properties,
        }
    )


def test_condition_true_false_and_error(tmp_path: Path) -> None:
    rule = BASE_RULE + "condition: 'event.properties.campaign_id.startsWith(\"spring\")'\n"
    ruleset = load_ruleset(_rules_dir(tmp_path, rule)).with_keys({"acme": b"k" * 32})
    verdicts = [
        decide(decode_json(_event(**p)), SNAPSHOT, ruleset)[0]
        for p in ({"campaign_id": "spring-1"}, {"campaign_id": "autumn"}, {}, {"campaign_id": "spring-2"})
    ]
    assert [d.verdict for d in verdicts] == ["forward", "block", "block", "forward"]
    assert verdicts[1].reasons == ("rule_condition_false",)
    assert verdicts[2].reasons == ("rule_condition_error",)  # missing key: fail closed


def test_condition_sees_consent_and_status(tmp_path: Path) -> None:
    rule = BASE_RULE + 'condition: \'consent.jurisdiction == "US" && status == ""\'\n'
    ruleset = load_ruleset(_rules_dir(tmp_path, rule)).with_keys({"acme": b"k" * 32})
    assert decide(decode_json(_event()), SNAPSHOT, ruleset)[0].forwarded
