"""Enumerated event values compare as the standard says (P3): normalized once at decode,
and read the strictest way when missing or unknown; every spelling of the zero ad id is
limit-ad-tracking."""

from __future__ import annotations

import shutil
from typing import Any

import orjson
import pytest

from streams.core.codec import decode_json
from streams.core.consent import effective_consent
from streams.core.models import Event, StateSnapshot
from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.offline.cases import decide_case
from tests.conftest import RULES_DIR

# A site-visit rule that, unlike the shipped one, does not require the platform field.
SITE_RULE = """\
partner: visits
jurisdictions: [US]
consent: {interest_based_ads: required, ad_cookies_on_web: required}
events:
  site_visit:
    fields:
      event_id: {from: event_id, transform: pseudonym}
      country: {from: context.country, pattern: '[A-Z]{2}'}
"""


@pytest.fixture(scope="module")
def visits(tmp_path_factory: Any) -> Ruleset:
    directory = tmp_path_factory.mktemp("visits")
    shutil.copy(RULES_DIR / "_leak-scan.yaml", directory / "_leak-scan.yaml")
    (directory / "visits.yaml").write_text(SITE_RULE)
    return load_ruleset(directory).with_keys({"visits": b"v" * 32})


def _visit(device: dict[str, Any] | None, ad_cookies: str = "denied") -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": "site_visit",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": "acct-1",
        "context": {"country": "US"},
    }
    if device is not None:
        event["device"] = device
    consent = {"subject": "account:acct-1", "interest_based_ads": "granted", "ad_cookies": ad_cookies}
    return {"event": event, "consent": [consent]}


@pytest.mark.parametrize(
    "device",
    [
        {"platform": "WEB"},
        {"platform": "Web"},
        {"platform": " web "},
        {"platform": "ｗｅｂ"},  # fullwidth
        {"platform": "w\u200beb"},  # a zero-width space inside
        {"platform": "browser"},  # unknown: may be a browser
        {},  # missing
        None,  # no device at all
    ],
    ids=["upper", "title", "spaces", "fullwidth", "zwsp", "unknown", "missing", "no-device"],
)
def test_a_stored_ad_cookie_denial_blocks_whatever_the_platform_spelling(
    visits: Ruleset, device: dict[str, Any] | None
) -> None:
    case = _visit(device)
    [decision] = decide_case(case, orjson.dumps(case), visits)
    assert decision.verdict == "block" and "consent_ad_cookies_declined" in decision.reasons


@pytest.mark.parametrize("platform", ["ios", "android", "tv"])
def test_an_app_platform_is_not_web(visits: Ruleset, platform: str) -> None:
    case = _visit({"platform": platform.upper()})
    [decision] = decide_case(case, orjson.dumps(case), visits)
    assert decision.verdict == "forward", decision


def test_the_platform_is_normalized_once_at_decode() -> None:
    raw = orjson.dumps(
        {"event_id": "e", "event_type": "app_open", "event_time": 1, "device": {"platform": "iOS"}}
    )
    event = decode_json(raw)
    assert isinstance(event, Event) and event.device is not None and event.device.platform == "ios"


ZERO_SPELLINGS = [
    "00000000-0000-0000-0000-000000000000",
    "00000000000000000000000000000000",
    "{00000000-0000-0000-0000-000000000000}",
    "urn:uuid:00000000-0000-0000-0000-000000000000",
    "URN:UUID:00000000-0000-0000-0000-000000000000",
    "{00000000000000000000000000000000}",
    " 00000000-0000-0000-0000-000000000000 ",
    "\uff10" * 32,  # fullwidth digits
    "00000000-0000-0000-0000-000000000000\u200b",  # a zero-width space after it
    "\u0660" * 32,  # Arabic-Indic zeros
]


@pytest.mark.parametrize("ad_id", ZERO_SPELLINGS)
def test_every_spelling_of_the_zero_ad_id_is_limit_ad_tracking(ad_id: str) -> None:
    event = Event.model_validate(
        {"event_id": "e", "event_type": "app_install", "event_time": 1, "device": {"ad_id": ad_id}}
    )
    assert effective_consent(event, StateSnapshot()).limit_ad_tracking


@pytest.mark.parametrize("ad_id", ZERO_SPELLINGS)
def test_the_zero_ad_id_never_leaves(ruleset: Ruleset, ad_id: str) -> None:
    event = {
        "event_id": "ev-zero",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": "acct-1",
        "device": {"platform": "ios", "ad_id": ad_id, "limit_ad_tracking": False},
        "context": {"country": "US"},
    }
    case = {"event": event, "consent": [{"subject": "account:acct-1", "interest_based_ads": "granted"}]}
    for decision in decide_case(case, orjson.dumps(case), ruleset):
        assert "ad_id" not in (decision.record or {})


@pytest.mark.parametrize(
    "ad_id", ["6d2c9e1a-6f0b-4c47-9b8e-3f1f6a1c2b3d", "0000000-0000", "00000000-0000-0000-0000-000000000001"]
)
def test_a_real_ad_id_is_not_zero(ad_id: str) -> None:
    event = Event.model_validate(
        {"event_id": "e", "event_type": "app_install", "event_time": 1, "device": {"ad_id": ad_id}}
    )
    assert not effective_consent(event, StateSnapshot()).limit_ad_tracking
