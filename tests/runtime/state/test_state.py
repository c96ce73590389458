"""State tables: tombstones, fail-closed invalid records, memory per entry."""

from __future__ import annotations

import json

import orjson
import pytest

from benchmarks.bench_state_memory import measure
from streams.core.codec import decode_json
from streams.core.models import StateSnapshot
from streams.runtime.state.tables import (
    MAX_JURISDICTIONS,
    ConsentTable,
    SignupStatusTable,
    dumps_snapshot,
    snapshot_for,
)


def test_consent_round_trip_and_tombstone() -> None:
    table = ConsentTable()
    record = {
        "subject": "account:a1",
        "updated_at": "2026-11-01T00:00:00Z",
        "interest_based_ads": "granted",
        "do_not_sell_or_share": False,
        "matched_identifier_opt_out": True,
        "jurisdiction": "US-CA",
    }
    table.apply(b"account:a1", orjson.dumps(record))
    stored = table.get(b"account:a1")
    assert stored is not None
    assert (stored.interest_based_ads, stored.do_not_sell_or_share, stored.matched_identifier_opt_out) == (
        "granted",
        False,
        True,
    )
    assert stored.ad_cookies is None and stored.jurisdiction == "US-CA"
    table.apply(b"account:a1", None)
    assert table.get(b"account:a1") is None and len(table) == 0


def test_invalid_consent_record_is_stored_fail_closed() -> None:
    table = ConsentTable()
    table.apply(b"account:a2", b"{garbage")
    stored = table.get(b"account:a2")
    assert stored is not None and table.invalid_records == 1
    assert stored.interest_based_ads == "denied" and stored.do_not_sell_or_share is True


def test_invalid_status_means_unknown() -> None:
    table = SignupStatusTable()
    table.apply(b"a3", orjson.dumps({"account_id": "a3", "status": "member"}))
    assert table.get("a3") is not None
    table.apply(b"a3", b'{"account_id": "a3", "status": "vip"}')
    assert table.get("a3") is None and table.invalid_records == 1


def test_snapshot_collects_account_profile_and_device_records() -> None:
    consent, status = ConsentTable(), SignupStatusTable()
    for subject in ("account:a4", "profile:p4", "device:d4", "account:other"):
        consent.apply(subject.encode(), orjson.dumps({"subject": subject, "interest_based_ads": "granted"}))
    status.apply(b"a4", orjson.dumps({"account_id": "a4", "status": "prospect"}))
    event = decode_json(
        orjson.dumps(
            {
                "event_id": "e",
                "event_type": "app_open",
                "event_time": 1,
                "account_id": "a4",
                "profile_id": "p4",
                "device": {"device_id": "d4"},
            }
        )
    )
    snapshot = snapshot_for(event, consent, status, stale=False)
    assert sorted(c.subject for c in snapshot.consent) == ["account:a4", "device:d4", "profile:p4"]
    assert snapshot.signup_status is not None and snapshot.signup_status.status == "prospect"


def test_consent_table_stays_under_250_bytes_per_entry() -> None:
    assert measure(200_000) <= 250


# -- ordering, identity and bounds (issue: trustworthy state) ---------------------------------

NOW_S = 1_800_000_000.0  # a fixed clock: 2027-01-15


def _consent(subject: str, updated_at: object, **choices: object) -> bytes:
    return json.dumps({"subject": subject, "updated_at": updated_at, **choices}).encode()


def test_latest_updated_at_wins_whatever_the_arrival_order() -> None:
    denial = _consent("account:o1", "2026-11-02T00:00:00Z", interest_based_ads="denied")
    older_grant = _consent("account:o1", "2026-11-01T00:00:00Z", interest_based_ads="granted")
    newer_grant = _consent("account:o1", "2026-11-03T00:00:00Z", interest_based_ads="granted")
    for order in ([older_grant, denial], [denial, older_grant]):
        table = ConsentTable(clock=lambda: NOW_S)
        for value in order:
            table.apply(b"account:o1", value)
        stored = table.get(b"account:o1")
        assert stored is not None and stored.interest_based_ads == "denied"
    table.apply(b"account:o1", newer_grant)
    stored = table.get(b"account:o1")
    assert stored is not None and stored.interest_based_ads == "granted"


def test_equal_times_resolve_to_the_most_restrictive() -> None:
    at = "2026-11-02T00:00:00Z"
    grant = _consent("account:o2", at, interest_based_ads="granted", do_not_sell_or_share=False)
    denial = _consent("account:o2", at, interest_based_ads="denied", do_not_sell_or_share=False)
    opt_out = _consent("account:o2", at, interest_based_ads="granted", do_not_sell_or_share=True)
    for order in ([grant, denial, opt_out], [opt_out, denial, grant]):
        table = ConsentTable(clock=lambda: NOW_S)
        for value in order:
            table.apply(b"account:o2", value)
        stored = table.get(b"account:o2")
        assert stored is not None
        assert (stored.interest_based_ads, stored.do_not_sell_or_share) == ("denied", True)
    status = SignupStatusTable(clock=lambda: NOW_S)
    status.apply(b"a5", orjson.dumps({"account_id": "a5", "status": "prospect", "updated_at": at}))
    status.apply(b"a5", orjson.dumps({"account_id": "a5", "status": "member", "updated_at": at}))
    assert status.get("a5") is None  # two statuses at one time: unknown, which blocks


@pytest.mark.parametrize(
    "updated_at",
    [2**64, 2**70, -1, "2999-01-01T00:00:00Z", "yesterday", "2026-11-01T00:00:00", True, 1.5, [1]],
)
def test_out_of_range_updated_at_is_invalid_and_stored_fail_closed(updated_at: object) -> None:
    table = ConsentTable(clock=lambda: NOW_S)
    table.apply(b"account:t1", _consent("account:t1", "2026-11-01T00:00:00Z", interest_based_ads="granted"))
    table.apply(b"account:t1", _consent("account:t1", updated_at, interest_based_ads="granted"))
    stored = table.get(b"account:t1")
    assert table.invalid_records == 1 and stored is not None
    assert stored.interest_based_ads == "denied" and stored.do_not_sell_or_share is True
    snapshot = StateSnapshot(consent=(stored,))
    assert orjson.loads(dumps_snapshot(snapshot))["consent"][0]["updated_at"] < 2**63  # never a crash
    # a genuinely newer record still replaces it; an older one does not
    table.apply(b"account:t1", _consent("account:t1", "2026-10-01T00:00:00Z", interest_based_ads="granted"))
    assert table.get(b"account:t1").interest_based_ads == "denied"  # type: ignore[union-attr]
    table.apply(b"account:t1", _consent("account:t1", "2026-11-05T00:00:00Z", interest_based_ads="granted"))
    assert table.get(b"account:t1").interest_based_ads == "granted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "key", [None, b"", b"o3", b"account:o3 ", b" account:o3", b"ACCOUNT:o3", b"account:other", b"\xff\xfe"]
)
def test_a_denial_is_never_lost_to_its_key(key: bytes | None) -> None:
    table = ConsentTable(clock=lambda: NOW_S)
    table.apply(b"account:o3", _consent("account:o3", "2026-11-01T00:00:00Z", interest_based_ads="granted"))
    table.apply(key, _consent("account:o3", "2026-11-02T00:00:00Z", interest_based_ads="denied"))
    stored = table.get(b"account:o3")
    assert table.invalid_records == 1
    assert stored is not None and stored.interest_based_ads == "denied"


def test_a_mismatched_record_restricts_every_subject_it_names() -> None:
    table = ConsentTable(clock=lambda: NOW_S)
    table.apply(b"account:k1", _consent("account:v1", "2026-11-02T00:00:00Z", interest_based_ads="granted"))
    for subject in (b"account:k1", b"account:v1"):
        stored = table.get(subject)
        assert stored is not None and stored.interest_based_ads == "denied"
    table.apply(b"k2", b"{not json")  # a bare id names every kind of subject
    for subject in (b"account:k2", b"profile:k2", b"device:k2"):
        assert table.get(subject) is not None
    assert table.invalid_records == 2


def test_signup_status_key_must_match_and_its_tombstone_deletes_what_the_key_named() -> None:
    status = SignupStatusTable(clock=lambda: NOW_S)
    status.apply(b"other-key", orjson.dumps({"account_id": "a6", "status": "prospect"}))
    assert status.get("a6") is None and status.get("other-key") is None  # mismatch: unknown for both
    status.apply(b"other-key", None)  # the tombstone of that key never leaves a status behind
    assert status.get("a6") is None and status.invalid_records == 1
    status.apply(b"a7", orjson.dumps({"account_id": "a7", "status": "member"}))
    assert status.get("a7") is not None
    status.apply(b"a7", None)
    assert status.get("a7") is None


def test_a_grant_never_outlives_a_tombstone_however_keyed() -> None:
    table = ConsentTable(clock=lambda: NOW_S)
    table.apply(b"account:g1", _consent("account:g1", "2026-11-01T00:00:00Z", interest_based_ads="granted"))
    table.apply(b"account:g1 ", None)  # a careless producer deletes with a trailing space
    stored = table.get(b"account:g1")
    assert stored is not None and stored.interest_based_ads == "denied" and table.invalid_records == 1
    status = SignupStatusTable(clock=lambda: NOW_S)
    status.apply(b"a8", orjson.dumps({"account_id": "a8", "status": "prospect"}))
    status.apply(b" a8", None)
    assert status.get("a8") is None


def _distinct_jurisdiction(i: int) -> str:
    """A well-formed jurisdiction code, different for every i below 676,000 (`AB-123`)."""
    first, second = divmod(i // 1000 % 676, 26)
    return f"{chr(65 + first)}{chr(65 + second)}-{i % 1000}"


def test_jurisdiction_table_is_bounded() -> None:
    table = ConsentTable(clock=lambda: NOW_S)
    for i in range(MAX_JURISDICTIONS + 10):
        subject = f"account:j{i}"
        table.apply(
            subject.encode(),
            _consent(subject, 1, interest_based_ads="granted", jurisdiction=_distinct_jurisdiction(i)),
        )
    assert len(table) == MAX_JURISDICTIONS + 10 and table.invalid_records == 10  # loading went on
    last = table.get(f"account:j{MAX_JURISDICTIONS + 9}".encode())
    assert last is not None and last.interest_based_ads == "denied" and last.jurisdiction is None


def test_packed_layouts_are_the_ones_disk_stores_were_written_with() -> None:
    """The disk store keeps the packed ints: naming the bit positions must not move them."""
    consent_store: dict[bytes, int] = {}
    consent = ConsentTable(store=consent_store)
    record = {
        "subject": "account:a1",
        "updated_at": 1_795_000_000_000,
        "interest_based_ads": "denied",  # code 2, bits 0-1
        "do_not_sell_or_share": False,  # code 1, bits 2-3
        "matched_identifier_opt_out": True,  # code 2, bits 4-5
        "ad_cookies": "granted",  # code 1, bits 6-7
        "jurisdiction": "US-CA",  # index 1, bits 8-23
    }
    consent.apply(b"account:a1", orjson.dumps(record))
    assert consent_store[b"account:a1"] == 2 | 1 << 2 | 2 << 4 | 1 << 6 | 1 << 8 | 1_795_000_000_000 << 24
    status_store: dict[bytes, int] = {}
    statuses = SignupStatusTable(store=status_store)
    status = {"account_id": "a1", "status": "member", "updated_at": 1_795_000_000_000}
    statuses.apply(b"a1", orjson.dumps(status))
    assert status_store[b"a1"] == 2 | 1_795_000_000_000 << 3  # member is code 2, bits 0-2
