"""Country and region codes, checked against ISO 3166 as `pycountry` ships it.

A jurisdiction is an ISO 3166-1 alpha-2 country (`US`), an ISO 3166-2 subdivision
(`US-CA`), or the European area as a whole (`EU`, `EEA`). Codes are compared by what they
name, never by their shape: `UK` has the shape of a country code but is not one (the
United Kingdom is `GB`). A code the guard cannot place is read the strictest way (the
GDPR applies, see `streams.core.consent`); a rule that names one is refused with a
did-you-mean.
"""

from __future__ import annotations

from functools import lru_cache

import pycountry

AREAS = frozenset({"EU", "EEA"})  # the European Union and Economic Area, named as a whole
_MAX_CODE_CHARS = 6
# What a code the guard cannot place becomes: no rule can list it (so the event is out of
# every rule's scope), and the GDPR is taken to apply (the strictest reading).
UNPLACED = "unplaced"  # `US-CA`, `GB-ENG`; anything longer names nothing


@lru_cache(maxsize=4096)
def is_country(code: str) -> bool:
    """True when `code` is an assigned ISO 3166-1 alpha-2 code (upper case, as written)."""
    if len(code) != 2 or not (code.isascii() and code.isupper()):
        return False
    return pycountry.countries.get(alpha_2=code) is not None


@lru_cache(maxsize=4096)
def is_jurisdiction(code: str) -> bool:
    """True for a country, an ISO 3166-2 subdivision of one, or `EU`/`EEA` (upper case, as written)."""
    if code in AREAS or is_country(code):
        return True
    if len(code) > _MAX_CODE_CHARS or "-" not in code or not code.isascii() or code != code.upper():
        return False
    return pycountry.subdivisions.get(code=code) is not None  # type: ignore[no-untyped-call]


def normalize_code(text: str) -> str:
    """The code as compared: surrounding white space removed, upper case (`us-ca` is `US-CA`)."""
    return text.strip().upper()


def did_you_mean(code: str) -> str | None:
    """The country a mistyped or non-ISO code most likely meant (`UK` → `GB`), or None."""
    text = code.strip()
    if not text or len(text) > 64:
        return None
    upper = text.upper()
    if len(upper) == 3 and (country := pycountry.countries.get(alpha_3=upper)) is not None:
        return str(country.alpha_2)
    country_part = upper.split("-")[0]
    if "-" in upper and is_country(country_part):
        return country_part
    try:
        found = pycountry.countries.search_fuzzy(text)
    except LookupError:
        return None
    return str(found[0].alpha_2) if found else None


def placed(code: str) -> str:
    """A jurisdiction as compared: normalized, its country only (`us-ca` → `US`); `UNPLACED`
    when the guard cannot place it (not ISO 3166, not EU/EEA)."""
    return _placed(code) if len(code) <= _MAX_CODE_CHARS * 2 else UNPLACED


@lru_cache(maxsize=4096)  # short codes only: values repeat, and a long one names nothing
def _placed(code: str) -> str:
    normalized = normalize_code(code)
    if normalized in AREAS or is_country(normalized):
        return normalized
    if is_jurisdiction(normalized):
        return normalized.split("-")[0]
    return UNPLACED
