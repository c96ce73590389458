"""Hypothesis strategies for hostile events: forbidden values hidden everywhere.

Events are built around allowed event types with granted consent, so the guard would
forward them if it did not find what is hidden in them; the forbidden values are then
planted in random fields, nested, as keys, percent-encoded, in many identifier formats.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from streams.core.rules.model import ALLOWED_EVENT_TYPES, CONTENT_EVENT_TYPES

TITLE_NAMES = ["Stranger Things", "The Crown", "Squid Game", "Bridgerton", "Black Mirror", "Ozark"]
TITLE_IDS = ["80100172", "81231974", "tt4574334", "title:80057281", "title-81040344"]
URLS = [
    "https://www.example.com/title/80100172",
    "http://example.com/watch/81231974?trackId=1",
    "example.com/browse/genre/83",
    "www.example.org",
    "nflx://title/80100172",
    "streaming-app://watch/81231974",
    "//cdn.example.net/x.jpg",
    "m.example.co.uk/search?q=dark",
]
SEARCHES = [
    "how to watch squid game free",
    "best sci fi shows 2026",
    "movies like the irishman tonight",
]
EMAILS = ["Person@Example.com", "john.smith+promo@gmail.com", "JANE_DOE@EXAMPLE.ORG"]
PHONES = ["(650) 555-1212", "+1 650 555 1212", "650.555.1212", "+44 20 7946 0958", "16505551212"]
IPS = [
    "203.0.113.195",
    "198.51.100.7",
    "2001:db8:85a3:8d3:1319:8a2e:370:7348",
    "::ffff:198.51.100.7",
]

# What must never appear in any forwarded value (lowercased, percent-decoded).
FORBIDDEN_TOKENS = (
    [n.lower() for n in TITLE_NAMES]
    + ["80100172", "81231974", "tt4574334", "80057281", "81040344"]
    + ["example.com", "example.org", "example.net", "example.co.uk", "://"]
    + SEARCHES
    + [
        "person@example.com",
        "john.smith+promo@gmail.com",
        "jane_doe@example.org",
        "555-1212",
        "555 1212",
        "5551212",
        "7946",
        "203.0.113.195",
        "198.51.100.7",
        "8a2e:370:7348",
    ]
)


def _encodings(value: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            value,
            value.upper(),
            quote(value, safe=""),
            quote(quote(value, safe=""), safe=""),
            value.replace(" ", "-"),
            value.replace(" ", "_"),
            f"  {value}  ",
        ]
    )


forbidden_scalar = st.sampled_from(TITLE_NAMES + TITLE_IDS + URLS + SEARCHES + EMAILS + PHONES + IPS).flatmap(
    _encodings
)
watch_history = st.lists(
    st.fixed_dictionaries({"title_id": st.sampled_from(TITLE_IDS), "position_ms": st.integers(0, 10**7)}),
    min_size=1,
    max_size=3,
)
forbidden_value: st.SearchStrategy[Any] = st.one_of(
    forbidden_scalar,
    watch_history,
    st.lists(forbidden_scalar, min_size=1, max_size=3),
    st.dictionaries(forbidden_scalar, forbidden_scalar, min_size=1, max_size=2),
)

PLANTABLE_PATHS = [
    ("properties", "campaign_id"),
    ("properties", "install_source"),
    ("properties", "step"),
    ("properties", "plan"),
    ("device", "platform"),
    ("device", "ad_id"),
    ("context", "country"),
    ("context", "region"),
    ("properties", "title_name"),
    ("properties", "title_id"),
    ("properties", "search_query"),
    ("properties", "watch_history"),
    ("context", "page_url"),
    ("context", "referrer_url"),
    ("properties", "favourite"),
    ("device", "extra"),
]


def base_event(event_type: str, account: str, platform: str, country: str) -> dict[str, Any]:
    return {
        # unique per account, but not made of the account id (an event id that is, or holds,
        # one of the person's ids is not pseudonymized: every forward would be blocked)
        "event_id": f"ev-{event_type}-{account[::-1]}",
        "event_type": event_type,
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": account,
        "profile_id": f"{account}-p1",
        "device": {
            "device_id": f"dev-{account}",
            "platform": platform,
            "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "limit_ad_tracking": False,
        },
        "context": {
            "ip": "203.0.113.195",
            "country": country,
            "user_agent": "App/5 (Linux)",
            "consent": {"gpc": False, "ad_cookies": "granted"},
        },
        "user": {
            "email": "Person@Example.com",
            "phone": "(650) 555-1212",
            "kids_profile": False,
            "age_band": "adult",
        },
        "properties": {
            "campaign_id": "fall-launch-2026",
            "install_source": "app_store",
            "step": "payment",
            "plan": "premium",
        },
    }


@st.composite
def hostile_case(draw: st.DrawFn) -> dict[str, Any]:
    """A decide case whose event hides forbidden values in random places."""
    event_type = draw(st.sampled_from(sorted(ALLOWED_EVENT_TYPES) + sorted(CONTENT_EVENT_TYPES)[:3]))
    account = draw(st.sampled_from(["acct-000123", "acct-000777", "42"]))
    event = base_event(
        event_type,
        account,
        draw(st.sampled_from(["ios", "android", "web"])),
        draw(st.sampled_from(["US", "CA", "GB", "DE"])),
    )
    for _ in range(draw(st.integers(1, 4))):
        section, name = draw(st.sampled_from(PLANTABLE_PATHS))
        # typed fields take scalars (anything else is simply malformed); properties take anything
        event[section][name] = draw(forbidden_value if section == "properties" else forbidden_scalar)
    if draw(st.booleans()):
        event["properties"][draw(forbidden_scalar)] = draw(forbidden_value)
    consent = [
        {
            "subject": f"account:{account}",
            "interest_based_ads": "granted",
            "ad_cookies": "granted",
            "do_not_sell_or_share": False,
            "matched_identifier_opt_out": draw(st.booleans()),
        }
    ]
    return {
        "event": event,
        "consent": consent,
        "signup_status": {
            "account_id": account,
            "status": draw(st.sampled_from(["prospect", "in_signup"])),
        },
    }


@st.composite
def opt_out_case(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A clean, forwardable case with exactly one opt-out (or child signal) added; returns its kind."""
    account = "acct-000123"
    event_type = draw(st.sampled_from(sorted(ALLOWED_EVENT_TYPES)))
    event = base_event(event_type, account, draw(st.sampled_from(["ios", "android", "web"])), "US")
    record: dict[str, Any] = {
        "subject": f"account:{account}",
        "interest_based_ads": "granted",
        "ad_cookies": "granted",
        "matched_identifier_opt_out": False,
    }
    subject = draw(st.sampled_from([f"account:{account}", f"profile:{account}-p1", f"device:dev-{account}"]))
    kind = draw(
        st.sampled_from(
            [
                "gpc",
                "dns",
                "iba",
                "cookies",
                "usp",
                "gpp",
                "gpp_gpc",
                "kids",
                "minor",
                "missing",
                "tcf_bad",
                "gpp_bad",
            ]
        )
    )
    consent = [record]
    signals = event["context"]["consent"]
    if kind == "gpc":
        signals["gpc"] = True
    elif kind == "dns":
        consent.append({"subject": subject, "do_not_sell_or_share": True})
    elif kind == "iba":
        consent.append({"subject": subject, "interest_based_ads": "denied"})
    elif kind == "cookies":
        signals["ad_cookies"] = "denied"
    elif kind == "usp":
        signals["us_privacy"] = draw(st.sampled_from(["1YYN", "1NYY", "1-Y-"]))
    elif kind == "gpp":
        signals["gpp"] = "DBABL~CVVVAAAAAACA"
    elif kind == "gpp_gpc":
        signals["gpp"] = "DBABLA~CVVVkkkkkpFY.YA"
    elif kind == "kids":
        event["user"]["kids_profile"] = True
    elif kind == "minor":
        event["user"]["age_band"] = "minor"
    elif kind == "missing":
        consent = []
    elif kind == "tcf_bad":
        signals["tcf"] = "CLcVDxRMWfGmWAVAHCEN"
    else:
        signals["gpp"] = "DBABL~CVV"
    return {
        "event": event,
        "consent": consent,
        "signup_status": {"account_id": account, "status": "prospect"},
    }, kind
