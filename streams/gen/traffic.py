"""A deterministic synthetic population and realistic mixed event stream.

Used by the demo, the integration tests and the benchmarks. The same seed gives the same
people, consent, sign-up statuses and events, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from streams.gen.signals import encode_gpp, encode_tc_string, encode_usnat

TITLES = [
    ("80100172", "Stranger Things"),
    ("80025678", "The Crown"),
    ("81040344", "Squid Game"),
    ("81231974", "Wednesday"),
    ("80232398", "Bridgerton"),
    ("80117552", "Ozark"),
    ("80189685", "The Witcher"),
    ("80192098", "Money Heist"),
    ("80100173", "Dark"),
]
SEARCHES = ["stranger things", "new comedies", "korean drama", "true crime documentary", "anime"]
US_REGIONS = ["CA", "NY", "TX", "WA", "IL", "CO", "VA"]
EU_COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "SE", "IE"]
OTHER_COUNTRIES = ["CA", "GB", "BR", "JP"]
STEPS = ["registration", "plan_selection", "payment", "confirmation"]
PLANS = ["basic", "standard", "standard_with_ads", "premium"]
CAMPAIGNS = ["fall-launch-2026", "holiday-2026", "brand-always-on", "retarget-q4"]
ATTRIBUTION_VENDOR = 755

EVENT_MIX = [  # (event type, weight): most traffic is content the partners never see
    ("playback_started", 16),
    ("playback_progress", 14),
    ("title_selected", 10),
    ("row_impression", 10),
    ("page_view", 8),
    ("search", 5),
    ("title_rated", 2),
    ("app_open", 12),
    ("app_install", 3),
    ("site_visit", 8),
    ("signup_started", 3),
    ("signup_step_completed", 4),
    ("plan_selected", 2),
    ("signup_completed", 2),
]


@dataclass(frozen=True, slots=True)
class Person:
    """One synthetic account with one profile and one device."""

    account_id: str
    profile_id: str
    device_id: str
    platform: str
    ad_id: str
    limit_ad_tracking: bool
    country: str
    region: str | None
    kids_profile: bool
    minor: bool
    email: str
    phone: str
    status: str
    gpc: bool
    signal: str  # "tcf_ok", "tcf_denied", "usp_out", "gpp_out", "gpp_ok", "none"


@dataclass(frozen=True, slots=True)
class KeyedRecord:
    """A record ready to produce: key and value bytes (value None is a tombstone)."""

    key: bytes | None
    value: bytes | None


class TrafficGenerator:
    """Builds a population and streams events from it, deterministically under `seed`."""

    def __init__(self, seed: int = 7, population: int = 2_000, malformed_rate: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.malformed_rate = malformed_rate
        self.people = [self._person(i) for i in range(population)]
        self._event_types = [t for t, _ in EVENT_MIX]
        self._weights = [w for _, w in EVENT_MIX]
        self._counter = 0
        self._signals = {
            "tcf_ok": encode_tc_string([1, 7], [ATTRIBUTION_VENDOR]),
            "tcf_denied": encode_tc_string([1], [ATTRIBUTION_VENDOR]),
            "gpp_out": encode_gpp({7: encode_usnat(1, 1, 1)}),
            "gpp_ok": encode_gpp({7: encode_usnat(2, 2, 2, gpc=False)}),
        }

    def _person(self, index: int) -> Person:
        rng = self.rng
        region_roll = rng.random()
        if region_roll < 0.6:
            country, region = "US", rng.choice(US_REGIONS)
        elif region_roll < 0.85:
            country, region = rng.choice(EU_COUNTRIES), None
        else:
            country, region = rng.choice(OTHER_COUNTRIES), None
        platform = rng.choices(["ios", "android", "web", "tv"], [30, 30, 30, 10])[0]
        limited = platform in ("ios", "android") and rng.random() < 0.2
        zero = platform == "ios" and rng.random() < 0.1
        ad_id = "00000000-0000-0000-0000-000000000000" if zero else str(uuid.UUID(int=rng.getrandbits(128)))
        if country in EU_COUNTRIES:
            signal = rng.choices(["tcf_ok", "tcf_denied", "none"], [70, 20, 10])[0]
        elif country == "US":
            signal = rng.choices(["usp_ok", "usp_out", "gpp_ok", "gpp_out", "none"], [30, 5, 30, 5, 30])[0]
        else:
            signal = "none"
        return Person(
            account_id=f"acct-{index:07d}",
            profile_id=f"prof-{index:07d}-1",
            device_id=f"dev-{rng.getrandbits(40):010x}",
            platform=platform,
            ad_id=ad_id,
            limit_ad_tracking=limited,
            country=country,
            region=region,
            kids_profile=rng.random() < 0.05,
            minor=rng.random() < 0.02,
            email=f"Member.{index}@Example.com",
            phone=f"+1 650 555 {index % 10000:04d}",
            status=rng.choices(["prospect", "in_signup", "member", "former_member"], [25, 15, 50, 10])[0],
            gpc=platform == "web" and rng.random() < 0.15,
            signal=signal,
        )

    def consent_records(self) -> Iterator[KeyedRecord]:
        """Consent per account (most), some per device, some deleted (tombstones)."""
        rng = self.rng
        for person in self.people:
            roll = rng.random()
            if roll < 0.05:
                continue  # no record at all: consent_missing where required
            record = {
                "subject": f"account:{person.account_id}",
                "updated_at": "2026-11-01T00:00:00Z",
                "interest_based_ads": "denied" if rng.random() < 0.1 else "granted",
                "do_not_sell_or_share": rng.random() < 0.05,
                "matched_identifier_opt_out": rng.random() < 0.1,
                "ad_cookies": "denied" if rng.random() < 0.15 else "granted",
                "jurisdiction": f"{person.country}-{person.region}" if person.region else person.country,
            }
            key = f"account:{person.account_id}".encode()
            yield KeyedRecord(key, orjson.dumps(record))
            if roll > 0.97:
                yield KeyedRecord(key, None)  # deleted: consent unknown again
            if rng.random() < 0.03:
                device = {
                    "subject": f"device:{person.device_id}",
                    "updated_at": "2026-11-02T00:00:00Z",
                    "interest_based_ads": "denied",
                }
                yield KeyedRecord(device["subject"].encode(), orjson.dumps(device))

    def signup_statuses(self) -> Iterator[KeyedRecord]:
        """One sign-up status per account."""
        for person in self.people:
            status = {
                "account_id": person.account_id,
                "status": person.status,
                "updated_at": "2026-11-01T00:00:00Z",
            }
            yield KeyedRecord(person.account_id.encode(), orjson.dumps(status))

    def event(self, epoch_ms: int = 1_795_000_000_000) -> KeyedRecord:
        """One event (about 480 bytes), keyed by account id; some are malformed."""
        rng = self.rng
        self._counter += 1
        person = self.people[rng.randrange(len(self.people))]
        if rng.random() < self.malformed_rate:
            garbage = rng.choice(
                [
                    b"{not json",
                    b"",
                    b"\x00\x01\x02",
                    b'{"event_id": 5}',
                    b"[]",
                    b'{"event_id":"x","event_type":"app_open"}',
                ]
            )
            return KeyedRecord(rng.choice([person.account_id.encode(), None]), garbage)
        event_type = rng.choices(self._event_types, self._weights)[0]
        title_id, title_name = rng.choice(TITLES)
        consent: dict[str, Any] = {"gpc": person.gpc}
        if person.platform == "web":
            consent["ad_cookies"] = "granted" if rng.random() < 0.8 else "denied"
        if person.signal in self._signals:
            key = "tcf" if person.signal.startswith("tcf") else "gpp"
            consent[key] = self._signals[person.signal]
        elif person.signal.startswith("usp"):
            consent["us_privacy"] = "1YYN" if person.signal == "usp_out" else "1YNN"
        properties: dict[str, Any] = {"campaign_id": rng.choice(CAMPAIGNS)}
        if event_type in ("title_selected", "playback_started", "playback_progress", "title_rated"):
            properties |= {"title_id": title_id, "title_name": title_name, "row": "trending-now"}
            if event_type == "playback_progress":
                properties["position_ms"] = rng.randrange(0, 3_600_000)
                properties["watch_history"] = [t for t, _ in rng.sample(TITLES, 3)]
        elif event_type == "search":
            properties["search_query"] = rng.choice(SEARCHES)
        elif event_type == "signup_step_completed":
            properties["step"] = rng.choice(STEPS)
        elif event_type in ("plan_selected", "signup_completed"):
            properties["plan"] = rng.choice(PLANS)
        elif event_type == "app_install":
            properties["install_source"] = "app_store" if person.platform == "ios" else "play_store"
        page = (
            f"https://www.example.com/title/{title_id}"
            if event_type != "signup_started"
            else ("https://www.example.com/signup")
        )
        event = {
            "event_id": f"ev-{self._counter:010d}",
            "event_type": event_type,
            "event_time": epoch_ms + self._counter,
            "account_id": person.account_id,
            "profile_id": person.profile_id,
            "device": {
                "device_id": person.device_id,
                "platform": person.platform,
                "ad_id": person.ad_id,
                "limit_ad_tracking": person.limit_ad_tracking,
            },
            "context": {
                "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "country": person.country,
                "region": person.region,
                "page_url": page,
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                "consent": consent,
            },
            "user": {
                "email": person.email,
                "phone": person.phone,
                "kids_profile": person.kids_profile,
                "age_band": "minor" if person.minor else "adult",
            },
            "properties": properties,
        }
        return KeyedRecord(person.account_id.encode(), orjson.dumps(event))

    def events(self, count: int) -> Iterator[KeyedRecord]:
        """`count` events."""
        for _ in range(count):
            yield self.event()
