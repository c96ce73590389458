"""Hashing and truncation against the reference vectors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.core.identifiers import (
    coarsen_time,
    normalize_email,
    normalize_phone,
    pseudonym,
    sha256_hex,
    truncate_ip,
    usable_ad_id,
)


@pytest.mark.parametrize(
    ("raw", "gmail_dots", "digest"),
    [
        (
            "John_Smith@gmail.com",
            False,
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        ),
        (
            "Person@Example.com",
            False,
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        ),
        (
            "  Person@Example.com ",
            False,
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        ),
        (
            "jane.doe@gmail.com",
            True,
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69",
        ),
    ],
)
def test_email_hash_vectors(raw: str, gmail_dots: bool, digest: str) -> None:
    normalized = normalize_email(raw, gmail_dots)
    assert normalized is not None
    assert sha256_hex(normalized) == digest


@pytest.mark.parametrize(
    ("raw", "style", "digest"),
    [
        (
            "(650)555-1212",
            "digits",
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        ),
        (
            "+16505551212",
            "e164",
            "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8",
        ),
    ],
)
def test_phone_hash_vectors(raw: str, style: str, digest: str) -> None:
    normalized = normalize_phone(raw, "US", "digits" if style == "digits" else "e164")
    assert normalized is not None
    assert sha256_hex(normalized) == digest


def test_possible_but_invalid_phone_is_refused() -> None:
    assert normalize_phone("555-1212", "US", "e164") is None


@pytest.mark.parametrize("bad", ["", "not-an-email", "a@b", "two words@example.com"])
def test_invalid_email(bad: str) -> None:
    assert normalize_email(bad) is None


@pytest.mark.parametrize(
    ("raw", "truncated"),
    [
        ("203.0.113.195", "203.0.113.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("::ffff:198.51.100.7", "198.51.100.0"),
        ("not an ip", None),
    ],
)
def test_ip_truncation(raw: str, truncated: str | None) -> None:
    assert truncate_ip(raw) == truncated


def test_zero_and_limited_ad_ids_never_leave() -> None:
    assert usable_ad_id("00000000-0000-0000-0000-000000000000", False) is None
    assert usable_ad_id("6D92078A-8246-4BA4-AE5B-76104861E7DC", True) is None
    assert usable_ad_id("https://example.com", False) is None
    assert (
        usable_ad_id("6D92078A-8246-4BA4-AE5B-76104861E7DC", False) == "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    )


def test_pseudonyms_differ_per_partner_and_field() -> None:
    a = pseudonym(b"partner-a-key-0123456789", "account_id", "acct-1")
    assert a != pseudonym(b"partner-b-key-0123456789", "account_id", "acct-1")
    assert a != pseudonym(b"partner-a-key-0123456789", "device.device_id", "acct-1")
    assert a == pseudonym(b"partner-a-key-0123456789", "account_id", "acct-1")


def test_time_coarsening() -> None:
    moment = datetime(2026, 11, 28, 10, 42, 17, 512000, tzinfo=UTC)
    assert coarsen_time(moment, "minute") == "2026-11-28T10:42:00Z"
    assert coarsen_time(moment, "hour") == "2026-11-28T10:00:00Z"
    assert coarsen_time(moment, "day") == "2026-11-28T00:00:00Z"
