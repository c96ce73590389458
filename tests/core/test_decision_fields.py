"""What every decision carries, and what the leak scan is given, pinned where the core mutation
run (`make mutants`) found nothing checking it.

- every decision names its rule, the ruleset digest and the event: replay re-decides a
  blocked record under the ruleset its digest names (P7);
- the values the leak scan must never see leave include every key, string and number
  nested in a property tagged content or search (P1);
- `consults_state` is True exactly when some rule gets past the event-type check;
- labels of leak-scan findings and stripped fields, consent subjects, sign-up status, and
  which legal basis a TCF publisher restriction requires.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from streams.core.consent import effective_consent, subjects_of
from streams.core.decide import consults_state, decide, sensitive_values
from streams.core.identifiers import pseudonym, sha256_hex
from streams.core.leakscan import raw_values_of
from streams.core.models import ConsentRecord, Envelope, Event, Malformed, SignupStatus, StateSnapshot
from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.core.signals.tcf import (
    RESTRICTION_NOT_ALLOWED,
    RESTRICTION_REQUIRE_CONSENT,
    RESTRICTION_REQUIRE_LI,
    PublisherRestriction,
    TCString,
    VendorSet,
    decode_tc_string,
)
from streams.gen.signals import encode_tc_string
from tests.conftest import RULES_DIR, TEST_KEYS

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


CASES: dict[str, tuple[Event | Envelope | Malformed, StateSnapshot]] = {
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


@pytest.mark.parametrize(
    ("value", "why"),
    [({"a": 1}, "not_scalar"), (12345, "pattern_mismatch"), ("x" * 300, "too_long")],
)
def test_a_kept_value_that_fails_its_checks_is_stripped_and_says_why(
    ruleset: Ruleset, value: Any, why: str
) -> None:
    install = decide(_event(properties={"campaign_id": value}), GRANTED, ruleset)[0]
    assert install.partner == "install-attribution"
    assert install.forwarded  # an optional field: the record leaves without it
    assert install.stripped == (f"campaign_id: {why}",)
    assert "campaign_id" not in (install.record or {})


def test_the_leak_scan_names_what_it_found(ruleset: Ruleset) -> None:
    scanner = ruleset.leak_scanner
    assert scanner.scan({"campaign_id": "https://example.com/title/1"}) == ["campaign_id: url"]
    found = scanner.scan({"extra": {"acct000123": 1}}, raw_values_of([ACCOUNT]))
    assert found == ["extra: nested_value", "extra.acct000123: key_raw_value"]


def test_nested_values_are_scanned_below_the_top_level(ruleset: Ruleset) -> None:
    scanner = ruleset.leak_scanner
    url = "https://example.com/title/1"
    assert scanner.scan({"extra": {"k": url}}) == ["extra: nested_value", "extra.k: url"]
    assert scanner.scan({"extra": [url]}) == ["extra: nested_value", "extra[0]: url"]


def test_the_consent_subjects_of_an_event_with_and_without_a_device_id() -> None:
    assert subjects_of(_event()) == (f"account:{ACCOUNT}",)  # a device without an id
    bare = _event()
    assert subjects_of(bare.model_copy(update={"device": None})) == (f"account:{ACCOUNT}",)
    with_id = _event(device={"device_id": "dev-000123", "platform": "ios"})
    assert subjects_of(with_id) == (f"account:{ACCOUNT}", "device:dev-000123")


def test_a_missing_sign_up_status_blocks_with_its_own_reason(ruleset: Ruleset) -> None:
    signup = _event(event_type="signup_started", properties={"campaign_id": "spring"})
    conversions = next(d for d in decide(signup, GRANTED, ruleset) if d.partner == "signup-conversions")
    assert conversions.reasons == ("signup_status_missing",)


def _tc(consent: bool, li: bool, restriction: int | None, vendor: int = 42, purpose: int = 7) -> TCString:
    vendors = VendorSet(starts=(vendor,), ends=(vendor,))
    return TCString(
        version=2,
        cmp_id=1,
        cmp_version=1,
        vendor_list_version=1,
        policy_version=4,
        publisher_cc="AA",
        special_features=frozenset(),
        purposes_consent=frozenset({purpose} if consent else ()),
        purposes_li=frozenset({purpose} if li else ()),
        vendor_consent=vendors if consent else VendorSet(),
        vendor_li=vendors if li else VendorSet(),
        restrictions=() if restriction is None else (PublisherRestriction(purpose, restriction, vendors),),
    )


@pytest.mark.parametrize(
    ("consent", "li", "restriction", "allowed"),
    [
        (True, False, None, True),
        (False, True, None, True),  # purpose 7 may rest on legitimate interest
        (True, True, RESTRICTION_NOT_ALLOWED, False),
        (False, True, RESTRICTION_REQUIRE_CONSENT, False),
        (True, False, RESTRICTION_REQUIRE_CONSENT, True),
        (True, False, RESTRICTION_REQUIRE_LI, False),
        (False, True, RESTRICTION_REQUIRE_LI, True),
    ],
)
def test_a_publisher_restriction_decides_which_legal_basis_counts(
    consent: bool, li: bool, restriction: int | None, allowed: bool
) -> None:
    assert _tc(consent, li, restriction).allows(42, 7) is allowed


def test_an_envelope_is_blocked_as_not_allowed_or_as_not_decoded_in_full(ruleset: Ruleset) -> None:
    content = decide(
        Envelope.model_construct(event_id="e", event_type="title_selected"), StateSnapshot(), ruleset
    )
    assert [d.reasons for d in content] == [("event_type_not_allowed",)] * len(ruleset.rules)
    receivable = decide(
        Envelope.model_construct(event_id="e", event_type="app_install"), StateSnapshot(), ruleset
    )
    for decision, rule in zip(receivable, ruleset.rules, strict=True):
        if "app_install" in rule.events:
            assert (decision.reasons, decision.details) == (("internal_error",), ("not decoded in full",))
        else:
            assert decision.reasons == ("event_type_not_allowed",)


def test_a_zeroed_ad_id_and_do_not_track_reach_the_effective_consent() -> None:
    zeroed = _event(device={"platform": "ios", "ad_id": "00000000-0000-0000-0000-000000000000"})
    assert effective_consent(zeroed, GRANTED).limit_ad_tracking
    assert not effective_consent(_event(), GRANTED).limit_ad_tracking
    dnt = _event(context={"country": "US", "consent": {"dnt": True}})
    assert effective_consent(dnt, GRANTED).dnt is True
    assert effective_consent(_event(), GRANTED).dnt is False


def test_each_event_id_gets_its_own_keyed_pseudonym(ruleset: Ruleset) -> None:
    key = TEST_KEYS["install-attribution"]
    for event_id in ("ev-1", "ev-2"):
        install = decide(_event(event_id=event_id), GRANTED, ruleset)[0]
        assert install.forwarded and install.record is not None
        assert install.record["event_id"] == pseudonym(key, "event_id", event_id)


def test_vendor_ranges_one_id_apart_stay_apart() -> None:
    decoded = decode_tc_string(encode_tc_string([1, 7], [1, 2, 3, 5, 6]))
    assert [v for v in range(1, 8) if v in decoded.vendor_consent] == [1, 2, 3, 5, 6]


def test_gmail_dots_are_removed_only_when_the_rule_says_so(tmp_path: Path) -> None:
    shutil.copy(RULES_DIR / "_leak-scan.yaml", tmp_path / "_leak-scan.yaml")
    text = (RULES_DIR / "signup-conversions.yaml").read_text()
    assert "gmail_remove_dots: false" in text
    (tmp_path / "signup-conversions.yaml").write_text(
        text.replace("gmail_remove_dots: false", "gmail_remove_dots: true")
    )
    undotted = load_ruleset(tmp_path).with_keys({"signup-conversions": b"s" * 32})
    status = SignupStatus(account_id=ACCOUNT, status="prospect")
    matched = GRANTED.consent[0].model_copy(update={"matched_identifier_opt_out": False})
    snapshot = StateSnapshot(consent=(matched,), signup_status=status)
    signup = _event(event_type="signup_started", user={"email": "First.Last@gmail.com"})
    for rules, local in (
        (undotted, "firstlast"),
        (load_ruleset(RULES_DIR).with_keys(TEST_KEYS), "first.last"),
    ):
        conversions = next(d for d in decide(signup, snapshot, rules) if d.partner == "signup-conversions")
        assert conversions.forwarded and conversions.record is not None, conversions
        assert conversions.record["em"] == sha256_hex(f"{local}@gmail.com")
