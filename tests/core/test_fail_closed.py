"""Fail closed, pinned in the core: the strictest merge of every consent answer (in any order),
stale state blocks, and an internal error inside `decide` blocks every partner.

Each test here kills a promise mutant (tests/mutants/catalogue.py) that the rest of the core
suite let survive: `p3-strictest-flag-merge`, `fc-stale-state-blocks`, `fc-decide-never-raises`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streams.core.decide as decide_module
from streams.core.consent import effective_consent
from streams.core.decide import decide
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.rules.ruleset import Ruleset

ACCOUNT, PROFILE, DEVICE = "acct-000123", "prof-000123", "dev-000123"
SUBJECTS = (f"account:{ACCOUNT}", f"profile:{PROFILE}", f"device:{DEVICE}")
GRANTED = {"interest_based_ads": "granted", "ad_cookies": "granted"}


def _event(**changes: Any) -> Event:
    """An app install install-attribution forwards when consent is granted."""
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "profile_id": PROFILE,
        "device": {"device_id": DEVICE, "platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "US"},
        "user": {"kids_profile": False, "age_band": "adult"},
        "properties": {"campaign_id": "spring", "install_source": "app_store"},
    }
    return Event.model_validate(event | changes)


def _snapshot(*records: dict[str, Any], stale: bool = False) -> StateSnapshot:
    return StateSnapshot(consent=tuple(ConsentRecord.model_validate(r) for r in records), stale=stale)


def _install(ruleset: Ruleset, snapshot: StateSnapshot) -> Any:
    decisions = decide(_event(), snapshot, ruleset)
    return next(d for d in decisions if d.partner == "install-attribution")


def test_the_baseline_forwards(ruleset: Ruleset) -> None:
    assert _install(ruleset, _snapshot({"subject": SUBJECTS[0], **GRANTED})).forwarded


_flags = st.sampled_from([None, False, True])
_grants = st.sampled_from([None, "granted", "denied"])


@given(
    answers=st.lists(st.tuples(st.sampled_from(SUBJECTS), _flags, _flags, _grants, _grants), max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_every_stored_answer_is_merged_the_strictest_way_in_any_order(
    answers: list[tuple[str, bool | None, bool | None, str | None, str | None]], order: Any
) -> None:
    records = [
        {
            "subject": subject,
            "do_not_sell_or_share": dns,
            "matched_identifier_opt_out": mio,
            "interest_based_ads": iba,
            "ad_cookies": cookies,
        }
        for subject, dns, mio, iba, cookies in answers
    ]
    order.shuffle(records)
    consent = effective_consent(_event(), _snapshot(*records))

    def strictest_flag(values: list[bool | None]) -> bool | None:
        seen = [v for v in values if v is not None]
        return any(seen) if seen else None

    def strictest_grant(values: list[str | None]) -> str | None:
        seen = {v for v in values if v is not None}
        return "denied" if "denied" in seen else ("granted" if seen else None)

    assert consent.do_not_sell_or_share == strictest_flag([a[1] for a in answers])
    assert consent.matched_identifier_opt_out == strictest_flag([a[2] for a in answers])
    assert consent.interest_based_ads == strictest_grant([a[3] for a in answers])
    assert consent.ad_cookies == strictest_grant([a[4] for a in answers])


@pytest.mark.parametrize("first_says_no", [True, False])
def test_one_do_not_sell_among_several_records_blocks(ruleset: Ruleset, first_says_no: bool) -> None:
    saying = [{"subject": SUBJECTS[0], **GRANTED, "do_not_sell_or_share": False}]
    saying.insert(0 if first_says_no else 1, {"subject": SUBJECTS[2], "do_not_sell_or_share": True})
    decision = _install(ruleset, _snapshot(*saying))
    assert not decision.forwarded
    assert decision.reasons == ("consent_do_not_sell_or_share",)


def test_stale_state_blocks_what_fresh_state_forwards(ruleset: Ruleset) -> None:
    granted = {"subject": SUBJECTS[0], **GRANTED}
    assert _install(ruleset, _snapshot(granted)).forwarded
    stale = _install(ruleset, _snapshot(granted, stale=True))
    assert not stale.forwarded
    assert stale.reasons == ("consent_stale",)


@pytest.mark.parametrize("where", ["project", "effective_consent"])
def test_an_internal_error_inside_decide_blocks_every_partner(
    ruleset: Ruleset, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(decide_module, where, explode)
    decisions = decide(_event(), _snapshot({"subject": SUBJECTS[0], **GRANTED}), ruleset)
    assert [d.partner for d in decisions] == list(ruleset.partners)
    install = next(d for d in decisions if d.partner == "install-attribution")
    assert not install.forwarded
    assert install.reasons == ("internal_error",)
    assert install.details == ("RuntimeError",)
