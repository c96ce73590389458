"""The leak scan reads text the way people, browsers and URL parsers do (P1, P6, P10).

Each class below passed the scan before it folded what readers fold: another script's full
stop in a URL or IP, an invisible combining character inside a title, title id or phone
number, a look-alike letter from another script in a catalogue title, the person's own
phone number with separators the phone pattern does not know, an unkeyed digest of the
person's own ids, and an event id that is the person's account id.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest

from streams.core.decide import decide, sensitive_values
from streams.core.leakscan import LeakScanner
from streams.core.models import Decision, Event, StateSnapshot
from streams.core.rules.ruleset import Ruleset
from streams.offline.cases import decide_case
from tests.conftest import permissive_ruleset
from tests.core.test_leakscan import PERMISSIVE_FIELDS, _case

ACCOUNT, PROFILE, DEVICE = "acct-000123", "prof-77a1c9", "dev-9f3a21"
AD_ID = "6d2c9e1a-6f0b-4c47-9b8e-3f1f6a1c2b3d"


@pytest.fixture(scope="module")
def permissive(tmp_path_factory: Any) -> Ruleset:
    return permissive_ruleset(tmp_path_factory.mktemp("permissive-reader"), PERMISSIVE_FIELDS)


@pytest.fixture(scope="module")
def scanner(ruleset: Ruleset) -> LeakScanner:
    return ruleset.leak_scanner


def _decide(ruleset: Ruleset, case: dict[str, Any]) -> list[Decision]:
    return decide_case(case, orjson.dumps(case), ruleset)


def _leaks(permissive: Ruleset, value: Any, **event: Any) -> tuple[str, ...]:
    case = _case({"campaign_id": value}, **event)
    case["event"]["profile_id"] = PROFILE
    case["event"]["device"]["ad_id"] = AD_ID
    (decision,) = _decide(permissive, case)
    return decision.details if decision.reasons == ("leak_detected",) else ()


# -- another script's full stop in a URL or an IP -------------------------------------------


@pytest.mark.parametrize(
    ("value", "finding"),
    [
        ("example\u3002com", "url"),  # IDEOGRAPHIC FULL STOP
        ("www\uff61example\uff61com", "url"),  # HALFWIDTH IDEOGRAPHIC FULL STOP
        ("netflix\uff0ecom/title/80100172", "url"),  # FULLWIDTH FULL STOP
        ("203\u30020\u3002113\u3002195", "ip"),
        ("198\uff6151\uff61100\uff6117", "ip"),
        ("192\u2024168\u20241\u202423", "ip"),  # ONE DOT LEADER, a TS #39 look-alike of `.`
    ],
)
def test_other_scripts_full_stops_are_dots(scanner: LeakScanner, value: str, finding: str) -> None:
    assert scanner.scan({"campaign_id": value}) == [f"campaign_id: {finding}"]


# -- one invisible combining character inside ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "finding"),
    [
        ("Stran\u034fger Things", "title_name"),  # COMBINING GRAPHEME JOINER
        ("Squid\ufe0f Game", "title_name"),  # VARIATION SELECTOR-16
        ("Oza\U000e0100rk", "title_name"),  # VARIATION SELECTOR-17 (supplement)
        ("title\u034f80100172", "title_id"),
        ("80100\u034f172", "title_id"),
        ("650\u034f555\u034f1212", "phone"),
        ("650\u180b555\u180b1212", "phone"),  # MONGOLIAN FREE VARIATION SELECTOR ONE
        ("Dar\u0301k", "title_name"),  # a visible mark: still the title to a reader
    ],
)
def test_an_invisible_combining_character_hides_nothing(
    scanner: LeakScanner, value: str, finding: str
) -> None:
    assert scanner.scan({"campaign_id": value}) == [f"campaign_id: {finding}"]


# -- a look-alike letter from another script -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Str\u0430nger Things",  # CYRILLIC SMALL LETTER A
        "\u0405quid Game",  # CYRILLIC CAPITAL LETTER DZE
        "Ozark".replace("a", "\u0251"),  # LATIN SMALL LETTER ALPHA
        "Bridg\u0435rton",  # CYRILLIC SMALL LETTER IE
        "\u13a0ark",  # CHEROKEE LETTER A, which reads as D
        "The Cr\u03bfwn",  # GREEK SMALL LETTER OMICRON
        "Narc\u043es",
    ],
)
def test_a_look_alike_letter_from_another_script(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == ["campaign_id: title_name"]


@pytest.mark.parametrize("value", ["winter", "fall-launch-2026", "\u00e9t\u00e9", "\u043b\u0435\u0442\u043e"])
def test_ordinary_values_stay_ordinary(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == []


# -- the person's own phone with separators the pattern does not know ------------------------


@pytest.mark.parametrize(
    "value", ["650*555*1212", "650|555|1212", "650x555x1212", "tel650;555;1212", "1#650#555#1212"]
)
def test_the_persons_phone_whatever_the_separators(permissive: Ruleset, value: str) -> None:
    assert any(d.startswith("campaign_id:") for d in _leaks(permissive, value)), value


# -- unkeyed digests of the person's own ids -------------------------------------------------


def _spellings(identifier: str) -> list[str]:
    out = []
    for name in ("sha256", "sha1", "md5"):
        digest = hashlib.new(name, identifier.encode()).digest()
        out += [digest.hex(), digest.hex().upper(), base64.b64encode(digest).decode()]
        out += [base64.urlsafe_b64encode(digest).decode().rstrip("=")]
    return out


@pytest.mark.parametrize(
    "value",
    [*_spellings(ACCOUNT), *_spellings(PROFILE), *_spellings(DEVICE), *_spellings(AD_ID)[:4]],
)
def test_unkeyed_digests_of_the_persons_ids_are_caught(permissive: Ruleset, value: str) -> None:
    assert any(d.startswith("campaign_id:") for d in _leaks(permissive, value)), value


def test_the_rules_hashed_email_still_leaves(permissive: Ruleset) -> None:
    case = _case({"campaign_id": "winter"})
    (decision,) = _decide(permissive, case)
    assert decision.forwarded and decision.record is not None
    assert decision.record["em"] == hashlib.sha256(b"person@example.com").hexdigest()


# -- the event id as an identifier (P10) -----------------------------------------------------


def _install(event_id: str, ad_id: str) -> dict[str, Any]:
    event = {
        "event_id": event_id,
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "device": {"device_id": DEVICE, "platform": "ios", "ad_id": ad_id, "limit_ad_tracking": False},
        "context": {"country": "US"},
    }
    consent = {"subject": f"account:{ACCOUNT}", "interest_based_ads": "granted"}
    return {"event": event, "consent": [consent]}


@pytest.mark.parametrize(
    "event_id", [ACCOUNT, ACCOUNT.upper(), f"evt-{ACCOUNT}-7", DEVICE, AD_ID, f"{ACCOUNT.replace('-', '_')}"]
)
def test_an_event_id_naming_the_person_never_leaves_as_a_pseudonym(ruleset: Ruleset, event_id: str) -> None:
    """Before: two installs whose event id was the account id left under one pseudonym with
    two different ad ids, so the partner could tie the ad ids together across a reset."""
    install = next(
        d for d in _decide(ruleset, _install(event_id, AD_ID)) if d.partner == "install-attribution"
    )
    assert install.verdict == "block" and install.reasons == ("required_field_missing",)
    assert "event_id: names_the_subject" in install.details


def test_an_ordinary_event_id_still_leaves_as_a_pseudonym(ruleset: Ruleset) -> None:
    decisions = _decide(ruleset, _install("ev-5b1f0e2c", AD_ID))
    install = next(d for d in decisions if d.partner == "install-attribution")
    assert install.forwarded and install.record is not None and len(install.record["event_id"]) == 64


def test_raw_values_still_include_the_event_id(ruleset: Ruleset) -> None:
    event = Event.model_validate(_install("ev-5b1f0e2c", AD_ID)["event"])
    assert "ev5b1f0e2c" in sensitive_values(event, ruleset.tags)
    assert decide(event, StateSnapshot(), ruleset)


# -- an IPv4 address as URL parsers read it (WHATWG): hex and octal parts --------------------


@pytest.mark.parametrize(
    "value",
    [
        "0xcb.0.0x71.0xc3",
        "0313.0.0161.0303",
        "0xcb.0.29123",
        "0xCB.0X0.0x71.195",
        "0xcb\u30020\u3002113\u3002195",
    ],
)
def test_an_ipv4_address_in_hex_or_octal_parts(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == ["campaign_id: ip"]


@pytest.mark.parametrize("value", ["0.05", "1.05", "0.5", "0xcb.0.0x71.0x0", "v1.02", "2.0"])
def test_numbers_and_truncated_hex_addresses_pass(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == []


@pytest.mark.parametrize("event_id", ["person@example.com", "ev-6505551212", "16505551212"])
def test_an_event_id_holding_the_persons_email_or_phone_blocks_as_a_leak(
    permissive: Ruleset, event_id: str
) -> None:
    """The same P10 risk with PII: blocked as the leak scan blocks (`raw_value`), the one way
    P11 lets a protected value change a decision."""
    case = _case({"campaign_id": "winter"}, event_id=event_id)
    (decision,) = _decide(permissive, case)
    assert decision.reasons == ("leak_detected",) and "event_id: raw_value" in decision.details
