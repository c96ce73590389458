"""The leak scan sees what the partner would: numbers, every spelling of the person's own
identifiers, IPv4 carried in IPv6, titles however they are spelled, word runs (P1, P6)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams.core.leakscan as leakscan
from streams.core.identifiers import truncate_ip
from streams.core.leakscan import MAX_SCANNED_CHARS, LeakScanner
from streams.core.models import Decision
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.offline.cases import decide_case
from tests.conftest import RULES_DIR, permissive_ruleset

PERMISSIVE_FIELDS = """\
  {event_type}:
    fields:
      event_id: {{from: event_id, transform: pseudonym}}
      em: {{from: user.email, transform: sha256_email}}
      client_ip: {{from: context.ip, transform: truncate_ip}}
      campaign_id: {{from: properties.campaign_id, pattern: '(?s).{{0,1000}}'}}
      install_source: {{from: properties.install_source, pattern: '(?s).{{0,1000}}'}}
      plan: {{from: properties.plan, values: [basic, standard_with_ads]}}
      platform: {{from: device.platform, pattern: '(?s).{{0,1000}}'}}
"""


@pytest.fixture(scope="module")
def permissive(tmp_path_factory: Any) -> Ruleset:
    """Keeps untagged fields as they are (any text up to 1000 characters): the leak scan is the
    only defense."""
    return permissive_ruleset(tmp_path_factory.mktemp("permissive-scan"), PERMISSIVE_FIELDS)


@pytest.fixture(scope="module")
def scanner(ruleset: Ruleset) -> LeakScanner:
    """The shipped ruleset's scanner."""
    return ruleset.leak_scanner


def _case(properties: dict[str, Any], *, opted_out: bool = False, **event: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "ev-leak-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": "acct-000123",
        "device": {"device_id": "dev-9f3a21", "platform": "ios", "limit_ad_tracking": False},
        "context": {"ip": "203.0.113.195", "country": "US"},
        "user": {"email": "Person@Example.com", "phone": "(650) 555-1212", "age_band": "adult"},
        "properties": properties,
    }
    base.update(event)
    consent = {
        "subject": "account:acct-000123",
        "interest_based_ads": "granted",
        "ad_cookies": "granted",
        "matched_identifier_opt_out": opted_out,
    }
    return {"event": base, "consent": [consent]}


def _decide(ruleset: Ruleset, case: dict[str, Any]) -> list[Decision]:
    return decide_case(case, orjson.dumps(case), ruleset)


@pytest.mark.parametrize(
    ("value", "finding"),
    [
        (6505551212, "phone"),  # the person's phone digits as a number
        (80100172, "title_id"),  # a catalogue title id as a number
        (3405803971, "phone"),  # 203.0.113.195 as an integer
        (6.505551212e9, "phone"),
        pytest.param(10**5000, "oversized_value", id="too-many-digits-for-str"),
    ],
)
def test_numbers_are_scanned_like_strings(scanner: LeakScanner, value: float, finding: str) -> None:
    assert scanner.scan({"campaign_id": value}) == [f"campaign_id: {finding}"]


def test_small_numbers_and_booleans_pass(scanner: LeakScanner) -> None:
    assert scanner.scan({"count": 3, "year": 2026, "flag": True, "ratio": 0.5}) == []


@pytest.mark.parametrize(
    "spelling",
    [
        hashlib.sha256(b"person@example.com").hexdigest(),
        hashlib.sha256(b"person@example.com").hexdigest().upper(),
        hashlib.md5(b"person@example.com").hexdigest(),
        hashlib.sha256(b"+16505551212").hexdigest(),
        hashlib.sha256(b"16505551212").hexdigest(),
        "3405803971",  # the person's IPv4 address as an integer
        "acct_000123",
        "ACCT000123",
    ],
)
def test_own_identifiers_in_any_spelling_never_leave(permissive: Ruleset, spelling: str) -> None:
    """Opted out of matched identifiers: the hashed email must not slip out in a free field."""
    (decision,) = _decide(permissive, _case({"campaign_id": spelling}, opted_out=True))
    assert decision.verdict == "block" and decision.reasons == ("leak_detected",), decision
    assert "em" not in " ".join(decision.details)


def test_the_hashing_transform_itself_still_sends_the_hash(permissive: Ruleset) -> None:
    (decision,) = _decide(permissive, _case({"campaign_id": "winter"}))
    assert decision.forwarded and decision.record is not None
    assert decision.record["em"] == hashlib.sha256(b"person@example.com").hexdigest()
    assert decision.record["client_ip"] == "203.0.113.0"


@pytest.mark.parametrize(
    "device_id", ["6d92078a82464ba4ae5b76104861e7dc", "{6D92078A-8246-4BA4-AE5B-76104861E7DC}"]
)
def test_internal_device_id_copied_into_ad_id_in_another_spelling_is_caught(
    ruleset: Ruleset, device_id: str
) -> None:
    device = {
        "device_id": device_id,
        "platform": "ios",
        "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "limit_ad_tracking": False,
    }
    decisions = _decide(ruleset, _case({"campaign_id": "winter"}, device=device))
    install = next(d for d in decisions if d.partner == "install-attribution")
    assert install.verdict == "block" and "leak_detected" in install.reasons
    assert any(d.startswith("ad_id: raw_value") for d in install.details)


@pytest.mark.parametrize(
    ("address", "truncated"),
    [
        ("2002:cb00:71c3::1", "203.0.113.0"),  # 6to4: the /48 would hold all 32 bits
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.0"),  # Teredo client 192.0.2.45
        ("64:ff9b::203.0.113.195", "203.0.113.0"),  # NAT64 well-known prefix
        ("::ffff:203.0.113.195", "203.0.113.0"),  # IPv4-mapped
        ("::ffff:0:203.0.113.195", "203.0.113.0"),  # IPv4-translated
        ("::203.0.113.195", "203.0.113.0"),  # IPv4-compatible
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("::1", "::"),
    ],
)
def test_ipv6_carrying_ipv4_is_truncated_as_that_ipv4(address: str, truncated: str) -> None:
    assert truncate_ip(address) == truncated


@pytest.mark.parametrize(
    "address",
    ["2002:cb00:71c3::", "64:ff9b::cb00:71c3", "::203.0.113.195", "2001:0:4136:e378:8000:63bf:3fff:fdd2"],
)
def test_ipv6_forms_carrying_a_whole_ipv4_are_leaks(scanner: LeakScanner, address: str) -> None:
    assert scanner.scan({"client_ip": address}) == ["client_ip: ip"]


@pytest.mark.parametrize(
    "value",
    [
        "StrangerThings",
        "strangerthings4",
        "stranger+things",
        "stranger~things~s04",
        "Squid_Game_2",
        "thecrown",
        "dark2",
        "Stranger\u200bThings",  # zero-width space
        "Ｓｔｒａｎｇｅｒ Ｔｈｉｎｇｓ",  # fullwidth
        "the-queens-gambit",
    ],
)
def test_titles_with_separators_changed_or_digits_appended(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == ["campaign_id: title_name"]


@pytest.mark.parametrize("value", ["darkness", "strangers", "winter", "fall-launch-2026", "retarget-q4"])
def test_ordinary_ids_are_not_titles(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == []


@pytest.mark.parametrize(
    "value", ["how-to-watch", "best_comedy_specials", "watch-free-tonight-2026", "HowToWatchFree"]
)
def test_hyphen_and_underscore_word_runs_are_text(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == ["campaign_id: free_text"]


def test_values_the_rules_enumerate_are_vocabulary(permissive: Ruleset) -> None:
    (decision,) = _decide(permissive, _case({"campaign_id": "winter", "plan": "standard_with_ads"}))
    assert decision.forwarded and decision.record is not None
    assert decision.record["plan"] == "standard_with_ads"


@pytest.mark.parametrize(
    "value",
    [
        "٦٥٠٥٥٥١٢١٢",  # Arabic-Indic digits
        "\u200b".join("6505551212"),  # zero-width spaces between the digits
        "%36%35%30%35%35%35%31%32%31%32",
    ],
)
def test_phone_digits_in_other_scripts_or_hidden(scanner: LeakScanner, value: str) -> None:
    assert scanner.scan({"campaign_id": value}) == ["campaign_id: phone"]


def test_every_scan_pattern_is_linear_time_re2() -> None:
    """No backtracking `re` pattern touches event data (`"@" + "a" * 20000` was quadratic)."""
    patterns = [v for v in vars(leakscan).values() if isinstance(v, re.Pattern)]
    assert patterns == []
    scanner = load_ruleset(RULES_DIR).leak_scanner
    assert not any(isinstance(v, re.Pattern) for v in vars(scanner).values())


@pytest.mark.parametrize(
    ("value", "finding"),
    [
        ("@" + "a" * (MAX_SCANNED_CHARS - 1), None),
        ("a@" + "a" * (MAX_SCANNED_CHARS - 10) + ".com", "email"),
        ("@" + "a" * 20_000, "oversized_value"),
    ],
)
def test_long_values_are_bounded(scanner: LeakScanner, value: str, finding: str | None) -> None:
    assert scanner.scan({"v": value}) == ([f"v: {finding}"] if finding else [])


@pytest.mark.parametrize("pattern", [r"(?<=x)title\d+", r"(\d)\1{6}", r"title(?!s)\d+"])
def test_title_id_patterns_re2_cannot_compile_are_refused_at_load(tmp_path: Path, pattern: str) -> None:
    vocabulary = (RULES_DIR / "_leak-scan.yaml").read_text()
    marker = "title_id_patterns:\n"
    vocabulary = vocabulary.replace(marker, marker + f"  - '{pattern}'\n")
    (tmp_path / "_leak-scan.yaml").write_text(vocabulary)
    shutil.copy(RULES_DIR / "install-attribution.yaml", tmp_path)
    with pytest.raises(RulesetError) as info:
        load_ruleset(tmp_path)
    (problem,) = info.value.problems
    line = vocabulary.splitlines().index(f"  - '{pattern}'") + 1
    assert problem.file.endswith("_leak-scan.yaml") and problem.line == line
    assert "linear time" in problem.message and "RE2" in problem.fix
