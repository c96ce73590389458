"""Small factories for the records integration tests produce: an app install a partner may
receive, and a consent record for an account."""

from __future__ import annotations

from typing import Any

import orjson

from streams.gen.traffic import KeyedRecord

AD_ID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"


def app_install(event_id: str, account: str, **changes: Any) -> dict[str, Any]:
    """An `app_install` from an iOS device in the US (what install-attribution receives when
    the account's consent allows it); `changes` replace top-level fields."""
    event = {
        "event_id": event_id,
        "event_type": "app_install",
        "event_time": "2026-11-28T10:00:00Z",
        "account_id": account,
        "device": {"platform": "ios", "ad_id": AD_ID},
        "context": {"country": "US"},
        "properties": {"campaign_id": "store"},
    }
    return event | changes


def keyed_event(event: dict[str, Any]) -> KeyedRecord:
    """The event as produced: keyed by its account id."""
    return KeyedRecord(str(event["account_id"]).encode(), orjson.dumps(event))


def consent(account: str, interest_based_ads: str = "granted", **fields: Any) -> KeyedRecord:
    """A consent record for `account:<account>` (key and subject alike)."""
    subject = f"account:{account}"
    value = {"subject": subject, "interest_based_ads": interest_based_ads, **fields}
    return KeyedRecord(subject.encode(), orjson.dumps(value))
