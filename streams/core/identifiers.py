"""Identifier normalization and hashing: email, phone, keyed pseudonyms, IPs, ad ids, times."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import unicodedata
import uuid
from datetime import datetime
from functools import lru_cache
from typing import Literal

import phonenumbers

from streams.core.reading import fold

ZERO_AD_ID = "00000000-0000-0000-0000-000000000000"
PhoneStyle = Literal["e164", "digits"]
Granularity = Literal["minute", "hour", "day"]
_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 text, lowercase hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_email(raw: str, gmail_remove_dots: bool = False) -> str | None:
    """NFC, trim, lowercase; optionally drop dots in gmail local parts. None when not an email."""
    text = unicodedata.normalize("NFC", raw).strip().lower()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or "." not in domain or any(c.isspace() for c in text):
        return None
    if gmail_remove_dots and domain in _GMAIL_DOMAINS:
        local = local.replace(".", "")
    return f"{local}@{domain}"


@lru_cache(maxsize=65536)
def _valid_number(raw: str, default_region: str) -> phonenumbers.PhoneNumber | None:
    """The number parsed once per (text, region), whichever form is asked for; None when not valid."""
    try:
        number = phonenumbers.parse(unicodedata.normalize("NFC", raw), default_region)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


@lru_cache(maxsize=65536)
def _e164(raw: str, default_region: str) -> str | None:
    """The number in E.164, or None when not a valid number."""
    number = _valid_number(raw, default_region)
    if number is None:
        return None
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def normalize_phone(raw: str, default_region: str, style: PhoneStyle) -> str | None:
    """Parse to E.164 (`+16505551212`) or digits-only (`16505551212`); None when not valid.

    The projection (a rule's style) and the leak scan's spellings (E.164) of one phone share
    one parse: phonenumbers is most of a forwarded event's cold cost.
    """
    e164 = _e164(raw, default_region)
    if e164 is None or style == "e164":
        return e164
    return e164.lstrip("+")


def national_digits(raw: str, default_region: str) -> str | None:
    """The national significant number's digits (`6505551212`); None when not a valid number."""
    number = _valid_number(raw, default_region)
    return None if number is None else str(phonenumbers.national_significant_number(number))


def pseudonym(key: bytes, domain: str, value: str) -> str:
    """A per-partner keyed pseudonym: HMAC-SHA-256 over the field domain and the value."""
    return hmac.new(key, f"{domain}\x00{value}".encode(), hashlib.sha256).hexdigest()


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_LOW_32 = (1 << 32) - 1


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if any.

    IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible
    (`::a.b.c.d`, deprecated), 6to4 (`2002:AABB:CCDD::/48`), Teredo (`2001::/32`, the client
    address) and the NAT64 well-known prefix (`64:ff9b::/96`). Each one holds the whole
    IPv4 address, often inside the /48 an IPv6 address is otherwise truncated to.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    value = int(address)
    if address in _NAT64_WELL_KNOWN or address in _IPV4_TRANSLATED or (value >> 32 == 0 and value > 1):
        return ipaddress.IPv4Address(value & _LOW_32)
    return None


@lru_cache(maxsize=65536)
def truncate_ip(raw: str) -> str | None:
    """IPv4 to /24, IPv6 to /48; an IPv6 address carrying an IPv4 one is truncated as that IPv4.

    None when the text is not an address.
    """
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        address = embedded_ipv4(address) or address
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


_UUID_SPELLING_NOISE = str.maketrans("", "", "-{}() \t")


def is_zero_ad_id(raw: str | None) -> bool:
    """True for every spelling of the all-zero advertising id, which means limit-ad-tracking.

    With or without hyphens, braces or parentheses, a `urn:uuid:` prefix, in either case,
    fullwidth or ASCII: `00000000-0000-0000-0000-000000000000`, `{00000000000000000000000000000000}`,
    `URN:UUID:00000000-...`; invisible characters inside are not read (`reading.fold`).
    """
    if not raw or len(raw) > 128:
        return False
    if raw.isascii() and raw.count("0") < 32:
        return False  # the common case, at C speed: every ASCII spelling of zero has 32 zeros
    text = (raw if raw.isascii() else fold(raw)).strip().lower().translate(_UUID_SPELLING_NOISE)
    text = text.removeprefix("urn:").removeprefix("uuid:")
    return len(text) == 32 and not text.strip("0")


def usable_ad_id(raw: str, limit_ad_tracking: bool) -> str | None:
    """The ad id when it may leave: a real UUID, not zeroed, tracking not limited."""
    if limit_ad_tracking or is_zero_ad_id(raw):
        return None
    try:
        parsed = uuid.UUID(raw.strip())
    except ValueError:
        return None
    if parsed.int == 0:
        return None
    return str(parsed)


def coarsen_time(moment: datetime, granularity: Granularity) -> str:
    """Truncate a UTC time to the minute, hour or day, as RFC 3339 with `Z`."""
    if granularity == "day":
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif granularity == "hour":
        moment = moment.replace(minute=0, second=0, microsecond=0)
    else:
        moment = moment.replace(second=0, microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
