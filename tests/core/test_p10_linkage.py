"""P10: no partner record ties a resettable advertising id to the account or the person."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.identifiers import normalize_email, normalize_phone, pseudonym, sha256_hex
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.offline.cases import decide_case
from tests.conftest import RULES_DIR

AD_ID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
KEY = b"q" * 32
# (output name, field spec, links to the person?) — every source a rule may project
FIELD_POOL: dict[str, tuple[str, bool | None]] = {
    "ad_id": ("{from: device.ad_id, transform: ad_id}", None),  # None: the advertising id itself
    "external_id": ("{from: account_id, transform: pseudonym}", True),
    "profile_key": ("{from: profile_id, transform: pseudonym}", True),
    "device_key": ("{from: device.device_id, transform: pseudonym}", True),
    "em": ("{from: user.email, transform: sha256_email}", True),
    "ph": ("{from: user.phone, transform: sha256_phone}", True),
    "event_key": ("{from: event_id, transform: pseudonym}", False),
    "client_ip": ("{from: context.ip, transform: truncate_ip}", False),
    "platform": ("{from: device.platform, values: [ios, android]}", False),
    "country": ("{from: context.country, pattern: '[A-Z]{2}'}", False),
    "event_hour": ("{from: event_time, transform: coarsen_time}", False),
}
HEADER = """\
partner: acme
jurisdictions: [US]
consent: {interest_based_ads: required, ad_cookies_on_web: not_required}
events:
"""
EVENT = {
    "event_id": "ev-p10-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:42:17Z",
    "account_id": "acct-000123",
    "profile_id": "prof-000123-1",
    "device": {"device_id": "dev-9f3a21", "platform": "ios", "ad_id": AD_ID, "limit_ad_tracking": False},
    "context": {"ip": "203.0.113.195", "country": "US"},
    "user": {"email": "Person@Example.com", "phone": "(650) 555-1212", "age_band": "adult"},
    "properties": {},
}
CONSENT = {
    "subject": "account:acct-000123",
    "interest_based_ads": "granted",
    "matched_identifier_opt_out": False,
}


def _rule_text(events: dict[str, list[str]]) -> str:
    body = ""
    for event_type, names in events.items():
        body += f"  {event_type}:\n    fields:\n"
        body += "".join(f"      {name}: {FIELD_POOL[name][0]}\n" for name in names)
    return HEADER + body


def _write(directory: Path, text: str) -> Path:
    shutil.copy(RULES_DIR / "_leak-scan.yaml", directory / "_leak-scan.yaml")
    (directory / "acme.yaml").write_text(text)
    return directory


@pytest.mark.parametrize("person_field", [n for n, (_, links) in FIELD_POOL.items() if links])
def test_rules_check_refuses_an_ad_id_next_to_anything_person_derived(
    tmp_path: Path, person_field: str
) -> None:
    text = _rule_text({"app_open": ["platform"], "app_install": ["event_key", "ad_id", person_field]})
    with pytest.raises(RulesetError) as info:
        load_ruleset(_write(tmp_path, text))
    (problem,) = info.value.problems
    assert problem.file.endswith("acme.yaml")
    assert problem.line == text.splitlines().index("  app_install:") + 1
    assert "P10" in problem.message and "'ad_id'" in problem.message and person_field in problem.message
    assert problem.fix


def test_ad_id_with_event_pseudonym_and_context_is_allowed(tmp_path: Path) -> None:
    fields = ["event_key", "ad_id", "platform", "country", "client_ip", "event_hour"]
    text = _rule_text({"app_install": fields})
    assert load_ruleset(_write(tmp_path, text)).partners == ("acme",)


def test_ad_id_and_account_in_different_event_types_are_separate_records(tmp_path: Path) -> None:
    text = _rule_text({"app_install": ["ad_id", "platform"], "app_open": ["external_id", "platform"]})
    assert load_ruleset(_write(tmp_path, text)).partners == ("acme",)


def _person_values() -> set[str]:
    return {
        pseudonym(KEY, "account_id", "acct-000123"),
        pseudonym(KEY, "profile_id", "prof-000123-1"),
        pseudonym(KEY, "device.device_id", "dev-9f3a21"),
        sha256_hex(normalize_email("Person@Example.com") or ""),
        sha256_hex(normalize_phone("(650) 555-1212", "US", "e164") or ""),
    }


PERSON_VALUES = _person_values()
field_sets = st.lists(st.sampled_from(sorted(FIELD_POOL)), min_size=1, max_size=6, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"app_install": field_sets}, optional={"app_open": field_sets}))
def test_p10_property_over_generated_rules(events: dict[str, list[str]]) -> None:
    """A generated rule loads iff no event type links the ad id to the person; a loaded one
    never forwards a record holding both."""
    links = any("ad_id" in names and any(FIELD_POOL[n][1] for n in names) for names in events.values())
    with tempfile.TemporaryDirectory() as tmp:
        directory = _write(Path(tmp), _rule_text(events))
        try:
            ruleset = load_ruleset(directory).with_keys({"acme": KEY})
        except RulesetError as exc:
            assert links and all("P10" in p.message for p in exc.problems), exc
            return
    assert not links
    for event_type in events:
        case: dict[str, Any] = {"event": dict(EVENT, event_type=event_type), "consent": [CONSENT]}
        (decision,) = decide_case(case, orjson.dumps(case), ruleset)
        assert decision.forwarded, decision  # a clean event: the property is not vacuous
        values = set((decision.record or {}).values())
        assert not (AD_ID.lower() in values and values & PERSON_VALUES), decision
