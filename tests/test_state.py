"""State tables: tombstones, fail-closed invalid records, memory per entry."""

from __future__ import annotations

import orjson

from benchmarks.bench_state_memory import measure
from streams.core.codec import decode_json
from streams.runtime.state import ConsentTable, SignupStatusTable, snapshot_for


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
