"""Blocked records: bounded whatever the input, identifiers protected outside the payload too."""

from __future__ import annotations

import base64

import orjson
import pytest

from streams.core.models import ConsentRecord, Decision, SignupStatus, StateSnapshot
from streams.runtime.formats.payload import (
    MAX_KEY_BYTES,
    Keyring,
    PayloadProtector,
    PayloadTamperedError,
    reveal,
)
from streams.runtime.formats.records import SourceRef, Withheld, blocked_input, blocked_record, partner_views

KEYRING = Keyring({"k1": b"\x01" * 32}, "k1")
EMAIL = "jane.doe@example.com"


def _decision(event_id: str | None, details: tuple[str, ...] = ()) -> Decision:
    return Decision("p", "p-v1", "sha256:" + "a" * 64, event_id, "block", ("consent_gpc",), details=details)


def _snapshot() -> StateSnapshot:
    return StateSnapshot(
        consent=(ConsentRecord(subject="account:acct-42", interest_based_ads="denied", updated_at=1),),
        signup_status=SignupStatus(account_id="acct-42", status="member"),
    )


def _total(key: bytes | None, value: bytes, headers: list[tuple[str, str | bytes | None]]) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v or b"") for k, v in headers)


@pytest.mark.parametrize("mode", ["redacted", "encrypted"])
def test_identifiers_are_keyed_hashes_everywhere_in_the_blocked_record(mode: str) -> None:
    protector = PayloadProtector(mode, KEYRING)  # type: ignore[arg-type]
    source = SourceRef("internal.events", 0, 7, 1, EMAIL.encode(), "json")
    raw = orjson.dumps({"event_id": "evt-acct-42", "event_type": "search", "event_time": 1})
    shared = blocked_input(source, raw, _snapshot(), "evt-acct-42", protector)
    key, value, _ = blocked_record([Withheld.of(_decision("evt-acct-42"))], shared, source, 900_000)
    text = (key or b"") + value
    assert b"acct-42" not in text and b"example.com" not in text and EMAIL.encode() not in text
    record = orjson.loads(value)
    assert record["event_id"].startswith("redacted:") and record["source"]["key_redacted"].startswith(
        "redacted:"
    )
    assert record["snapshot"]["consent"][0]["interest_based_ads"] == "denied"  # choices stay readable


def test_full_mode_keeps_identifiers_and_small_keys() -> None:
    protector = PayloadProtector("full")
    source = SourceRef("internal.events", 0, 7, 1, b"acct-42", "json")
    shared = blocked_input(source, b"{}", _snapshot(), "evt-1", protector)
    key, value, _ = blocked_record([Withheld.of(_decision("evt-1"))], shared, source, 900_000)
    record = orjson.loads(value)
    assert key == b"acct-42" and base64.b64decode(record["source"]["key_b64"]) == b"acct-42"
    assert record["event_id"] == "evt-1" and record["snapshot"]["signup_status"]["account_id"] == "acct-42"


def test_an_oversized_key_is_kept_only_as_its_hash() -> None:
    big = b"k" * 500_000
    source = SourceRef("internal.events", 0, 7, 1, big, "json")
    shared = blocked_input(source, b"{}", None, "evt-1", PayloadProtector("full"))
    key, value, headers = blocked_record([Withheld.of(_decision("evt-1"))], shared, source, 10_000)
    assert _total(key, value, headers) <= 10_000 and len(key or b"") == 64
    assert orjson.loads(value)["source"]["key_size"] == 500_000 > MAX_KEY_BYTES


@pytest.mark.parametrize("mode", ["full", "redacted", "encrypted"])
def test_reduced_form_drops_or_hashes_everything_unbounded(mode: str) -> None:
    protector = PayloadProtector(mode, KEYRING)  # type: ignore[arg-type]
    event_id = "e" * 60_000
    raw = orjson.dumps({"event_id": event_id, "event_type": "search", "event_time": 1, "pad": "x" * 50_000})
    source = SourceRef("internal.events", 0, 7, 1, b"k" * 5_000, "json")
    shared = blocked_input(source, raw, _snapshot(), event_id, protector)
    key, value, headers = blocked_record(
        [Withheld.of(_decision(event_id, ("d" * 30_000,)))], shared, source, 20_000
    )
    assert _total(key, value, headers) <= 20_000
    record = partner_views(orjson.loads(value))[0]  # the partner's view of the v2 record
    assert record["reduced"] and "record_too_large" in record["reasons"]
    assert record["snapshot"] is None and record["details"] == [] and record["original_b64"] is None
    assert "ciphertext_b64" not in record and "original_redacted" not in record
    assert len(record["event_id"]) <= 256


def test_only_the_ciphertext_counts_in_encrypted_mode() -> None:
    protector = PayloadProtector("encrypted", KEYRING)
    source = {"topic": "internal.events", "partition": 0, "offset": 7}
    blocked = {**protector.protect(b'{"real": 1}', source), "source": source}
    assert reveal(blocked, KEYRING) == b'{"real": 1}'
    damaged = {**blocked, "ciphertext_b64": base64.b64encode(b"\x00" * 40).decode()}
    planted = {**damaged, "original_b64": base64.b64encode(b'{"planted": 1}').decode()}
    for record in (damaged, planted, {**blocked, "original_b64": planted["original_b64"]}):
        with pytest.raises(PayloadTamperedError):
            reveal(record, KEYRING)


def test_a_partner_record_names_its_ruleset_rule_and_input_in_headers_never_a_value() -> None:
    from streams.runtime.formats.records import PARTNER_HEADER_NAMES, partner_headers

    decision = Decision(
        partner="p",
        rule_id="p-v1",
        ruleset_digest="sha256:" + "b" * 64,
        event_id="ev-secret-1",
        verdict="forward",
        record={"event_id": "abc", "country": "US"},
    )
    source = SourceRef("internal.events", 2, 12345, 1_700_000_000_000, b"acct-secret", "json")
    headers = partner_headers(decision, source)
    assert tuple(name for name, _ in headers) == PARTNER_HEADER_NAMES
    assert dict(headers) == {
        "pg-ruleset-digest": ("sha256:" + "b" * 64).encode(),
        "pg-rule-id": b"p-v1",
        "pg-source-topic": b"internal.events",
        "pg-source-partition": b"2",
        "pg-source-offset": b"12345",
    }
    assert b"secret" not in b"".join(value for _, value in headers if isinstance(value, bytes))
