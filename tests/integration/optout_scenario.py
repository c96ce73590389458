"""The opt-out notice scenario (P12) against a real broker, as one function any test can call.

`optout_scenario(bootstrap, tmp, env)` runs a guard (`env`: its extra settings, e.g. the
state store or `PARTNER_GUARD_WORKERS=2`) through forwards, revokes, a second identical
revoke, a re-grant and a new opt-out, a deletion and a replay of the consent topic, and
asserts at each step which notices reached which partner. It needs the default topic names
(`partner.<id>.optouts`, `guard.forwarded`, `privacy.consent`) to itself: a fresh broker.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from streams.cli import app
from streams.core.identifiers import normalize_email, normalize_phone, pseudonym, sha256_hex
from streams.core.notices import NOTICE_FORMAT, Marker
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    KEY_ENV,
    GuardProcess,
    produce,
    read_blocked,
    read_topic,
    start_guard,
    wait_all_committed,
)
from tests.integration.records import AD_ID, app_install, keyed_event

INPUT = "internal.events"
CONSENT = "privacy.consent"
FORWARDED = "guard.forwarded"
OPTOUTS = {p: f"partner.{p}.optouts" for p in ("install-attribution", "signup-conversions")}
SIGNUP_KEY = KEY_ENV["PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS"].encode()
EMAIL, PHONE = "Person.A@Example.com", "+1 415 555 0100"
DAY_MS = 24 * 3600 * 1000


def now_ms() -> int:
    """The wall clock in epoch ms (consent records are stamped with it)."""
    return int(time.time() * 1000)


def consent_record(account: str, at_ms: int, **choices: Any) -> KeyedRecord:
    """A consent record for `account:<account>`, granting everything unless `choices` say otherwise."""
    subject = f"account:{account}"
    value = {
        "subject": subject,
        "updated_at": at_ms,
        "interest_based_ads": "granted",
        "do_not_sell_or_share": False,
        "matched_identifier_opt_out": False,
        "ad_cookies": "granted",
        "jurisdiction": "US",
        **choices,
    }
    return KeyedRecord(subject.encode(), orjson.dumps(value))


def signup_started(event_id: str, account: str) -> dict[str, Any]:
    """A sign-up start on iOS with the person's email and phone (signup-conversions receives it)."""
    return {
        "event_id": event_id,
        "event_type": "signup_started",
        "event_time": "2026-11-28T10:00:00Z",
        "account_id": account,
        "device": {"platform": "ios"},
        "context": {"country": "US"},
        "user": {"email": EMAIL, "phone": PHONE},
        "properties": {"campaign_id": "winter"},
    }


def notices(bootstrap: str) -> dict[str, list[dict[str, Any]]]:
    """Every committed notice, per partner."""
    return {
        partner: [orjson.loads(r.value or b"{}") for r in read_topic(bootstrap, topic)]
        for partner, topic in OPTOUTS.items()
    }


def latest_forwarded(bootstrap: str) -> dict[bytes, bytes | None]:
    """The forwarded topic as a compacted reader sees it: the latest value per key."""
    return {r.key or b"": r.value for r in read_topic(bootstrap, FORWARDED)}


class Consent:
    """Produces consent records and waits until a guard group has acted on all of them."""

    def __init__(self, bootstrap: str, group: str, guards: list[GuardProcess]) -> None:
        self.bootstrap, self.group, self.guards = bootstrap, group, guards
        self.produced = 0

    def send(self, *records: KeyedRecord) -> None:
        """Produce `records` and wait until the group committed past them."""
        self.produced += produce(self.bootstrap, CONSENT, list(records))
        self.wait()

    def wait(self, group: str | None = None, guards: list[GuardProcess] | None = None) -> None:
        """Wait until `group` (the scenario's by default) committed every consent record produced."""
        try:
            wait_all_committed(
                self.bootstrap,
                group or self.group,
                CONSENT,
                self.produced,
                timeout_s=120,
                guards=guards or self.guards,
            )
        except AssertionError as exc:
            logs = "\n".join(guard.log() for guard in guards or self.guards)
            raise AssertionError(f"{exc}\n{logs}") from None


def _count(found: dict[str, list[dict[str, Any]]]) -> Counter[tuple[str, str]]:
    return Counter((partner, n["kind"]) for partner, listed in found.items() for n in listed)


def optout_scenario(bootstrap: str, tmp: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the scenario (module docstring); returns what it saw, for a caller's own checks."""
    kafka = {"bootstrap.servers": bootstrap}
    ensure_topics(kafka, [INPUT], [CONSENT, "member.signup-status", FORWARDED], 3)
    start = now_ms()
    # acct-c: forwarded once to signup-conversions 500 days ago (a marker from then), nothing since
    old = Marker(start - 500 * DAY_MS, {"external_id": "pseudonym"}, {"external_id": "person"}, {})
    old = Marker(
        old.at_ms, old.forms, old.groups, {"external_id": (pseudonym(SIGNUP_KEY, "account_id", "acct-c"),)}
    )
    produce(bootstrap, FORWARDED, [KeyedRecord(b"f|signup-conversions|account:acct-c", old.encode())])
    produce(
        bootstrap,
        "member.signup-status",
        [KeyedRecord(b"acct-a", orjson.dumps({"account_id": "acct-a", "status": "prospect"}))],
    )
    group = f"optout-{uuid.uuid4().hex[:6]}"
    guard = start_guard(bootstrap, tmp, INPUT, group, {**(env or {})}, transactional_id=f"{group}-0")
    consent = Consent(bootstrap, group, [guard])
    try:
        guard.wait_ready()
        consent.send(*(consent_record(a, start) for a in ("acct-a", "acct-b", "acct-c")))
        events = [
            keyed_event(app_install("ev-a1", "acct-a")),
            keyed_event(signup_started("ev-a2", "acct-a")),
            keyed_event(app_install("ev-b1", "acct-b")),
        ]
        produce(bootstrap, INPUT, events)
        wait_all_committed(bootstrap, group, INPUT, len(events), guards=[guard])
        signup_records = [
            orjson.loads(r.value or b"") for r in read_topic(bootstrap, "partner.signup-conversions.events")
        ]
        install_records = read_topic(bootstrap, "partner.install-attribution.events")
        blocked = [(b["partner"], b["reasons"]) for b in read_blocked(bootstrap)]
        assert len(signup_records) == 1 and len(install_records) == 2, (blocked, guard.log())
        received = signup_records[0]
        assert received["external_id"] == pseudonym(SIGNUP_KEY, "account_id", "acct-a")
        assert received["em"] == sha256_hex(normalize_email(EMAIL) or "")
        assert received["ph"] == sha256_hex(normalize_phone(PHONE, "US", "digits") or "")
        assert notices(bootstrap) == {p: [] for p in OPTOUTS}  # grants notify nobody

        # 1. revokes: A opts out of sale/sharing, B denies interest-based ads, C (outside the window) too
        consent.send(
            consent_record("acct-a", start + 1000, do_not_sell_or_share=True),
            consent_record("acct-b", start + 1000, interest_based_ads="denied"),
            consent_record("acct-c", start + 1000, interest_based_ads="denied"),
        )
        found = notices(bootstrap)
        assert _count(found) == {("install-attribution", "opt_out"): 2, ("signup-conversions", "opt_out"): 1}
        to_signup = found["signup-conversions"][0]
        assert to_signup["format"] == NOTICE_FORMAT and to_signup["choices"] == ["do_not_sell_or_share"]
        # exactly the identifiers the partner received, in its own pseudonyms and hashes
        assert to_signup["identifiers"] == {k: [received[k]] for k in ("external_id", "em", "ph")}
        assert {tuple(n["identifiers"].get("ad_id", ())) for n in found["install-attribution"]} == {
            (AD_ID,)
        }, found
        for listed in found.values():  # P10: no notice ties the ad id to the account
            for notice in listed:
                assert "ad_id" not in notice["identifiers"] or set(notice["identifiers"]) == {"ad_id"}
        markers = latest_forwarded(bootstrap)
        assert markers[b"f|signup-conversions|account:acct-c"] is None  # expired: deleted, not notified

        # 2. the same revoke again (a producer retry), and a second one later: no second notice
        consent.send(
            consent_record("acct-a", start + 1000, do_not_sell_or_share=True),
            consent_record("acct-a", start + 2000, do_not_sell_or_share=True),
        )
        assert _count(notices(bootstrap)) == _count(found)

        # 3. a re-grant, then a new opt-out: notified again
        consent.send(
            consent_record("acct-a", start + 3000),
            consent_record("acct-a", start + 4000, interest_based_ads="denied"),
        )
        again = _count(notices(bootstrap))
        assert again == {("install-attribution", "opt_out"): 3, ("signup-conversions", "opt_out"): 2}, again

        # 4. a deletion (tombstone): a deletion notice to each partner that received data, markers gone
        consent.send(KeyedRecord(b"account:acct-a", None))
        deleted = _count(notices(bootstrap))
        assert deleted[("install-attribution", "deletion")] == 1
        assert deleted[("signup-conversions", "deletion")] == 1
        markers = latest_forwarded(bootstrap)
        for partner in OPTOUTS:
            assert markers.get(f"f|{partner}|account:acct-a".encode(), b"gone") is None
        assert markers.get(b"n|account:acct-a", b"gone") is None
        consent.send(KeyedRecord(b"account:acct-a", None))  # a second deletion finds nothing
        assert _count(notices(bootstrap)) == deleted
        metric = guard.metric_value("partner_guard_optout_notices_total")
        assert metric == sum(deleted.values()), guard.log()
    finally:
        assert guard.stop() == 0, guard.log()

    # 5. a replay of the consent topic: a new group reads it (and the events) from the start
    replay_group = f"{group}-replay"
    replayer = start_guard(
        bootstrap, tmp, INPUT, replay_group, {**(env or {})}, transactional_id=f"{group}-1"
    )
    try:
        replayer.wait_ready()
        consent.wait(replay_group, [replayer])
        wait_all_committed(bootstrap, replay_group, INPUT, 3, guards=[replayer])
        assert _count(notices(bootstrap)) == deleted
        assert replayer.metric_value("partner_guard_optout_notices_total") == 0
    finally:
        assert replayer.stop() == 0, replayer.log()
    audited(bootstrap, tmp, deleted, start)
    return {"notices": deleted, "received": received}


def audited(bootstrap: str, tmp: Path, expected: Counter[tuple[str, str]], start_ms: int) -> None:
    """`replay optouts` counts exactly the notices sent, and its HTML section lists them."""
    since = datetime.fromtimestamp(start_ms / 1000 - 60, tz=UTC).isoformat()
    report = tmp / "optouts.html"
    result = CliRunner().invoke(
        app,
        ["replay", "optouts", "--since", since, "--list", "--html", str(report)],
        env={"PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap},
    )
    assert result.exit_code == 0, result.output
    for (partner, kind), count in expected.items():
        assert f"{partner}: " in result.output and f"{kind} {count}" in result.output, result.output
    assert result.output.count("id=") == sum(expected.values()), result.output
    assert "acct-" not in result.output and "acct-" not in report.read_text()  # no raw identifier
    future = datetime.fromtimestamp(time.time() + 3600, tz=UTC).isoformat()
    later = CliRunner().invoke(
        app, ["replay", "optouts", "--since", future], env={"PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap}
    )
    assert "opt_out 0, deletion 0" in later.output, later.output
    page = tmp / "replay.html"  # the replay report gains the section too
    replayed = CliRunner().invoke(
        app,
        ["replay", "--since", since, "--html", str(page), "--no-git", "--allow-empty"],
        env={"PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap},
    )
    assert page.exists(), replayed.output
    section = page.read_text().split('<section id="optout-notices">')[1]
    for (partner, _kind), count in expected.items():
        assert partner in section and f"<td>{count}</td>" in section, section
    assert "acct-" not in section
