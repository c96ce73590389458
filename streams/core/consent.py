"""Effective consent: the most restrictive of the event's own signals and every matching record."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from streams.core.identifiers import ZERO_AD_ID
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.signals.bits import SignalError
from streams.core.signals.gpp import (
    SECTION_TCFEUV2,
    SECTION_USNAT,
    SECTION_USPV1,
    decode_gpp,
    decode_usnat,
)
from streams.core.signals.tcf import TCString, decode_tc_string
from streams.core.signals.usprivacy import us_privacy_opted_out

EEA = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    ]
)
GDPR_REGIONS = EEA | {"GB", "CH", "EU", "EEA"}


@dataclass(frozen=True, slots=True)
class EffectiveConsent:
    """Everything the consent checks need, already reduced to the most restrictive value."""

    records_found: int
    gpc: bool
    dnt: bool
    do_not_sell_or_share: bool | None
    interest_based_ads: str | None
    ad_cookies: str | None
    matched_identifier_opt_out: bool | None
    limit_ad_tracking: bool
    jurisdiction: str | None
    tcf: TCString | None
    us_privacy_opt_out: bool
    gpp_opt_out: bool
    gpp_known_child: bool
    gpp_unsupported_sections: tuple[int, ...]
    unparseable: tuple[str, ...]

    @property
    def gdpr_applies(self) -> bool:
        """True when the event falls under the GDPR (EEA, UK, Switzerland)."""
        return self.jurisdiction in GDPR_REGIONS


def subjects_of(event: Event) -> tuple[str, ...]:
    """The consent-table keys that concern this event, in a fixed order (account, profile, device)."""
    keys = []
    if event.account_id:
        keys.append(f"account:{event.account_id}")
    if event.profile_id:
        keys.append(f"profile:{event.profile_id}")
    if event.device and event.device.device_id:
        keys.append(f"device:{event.device.device_id}")
    return tuple(keys)


def _most_restrictive_grant(values: Iterable[str | None]) -> str | None:
    seen = {v for v in values if v in ("granted", "denied")}
    if "denied" in seen:
        return "denied"
    return "granted" if seen else None


def _any_true(values: Iterable[bool | None]) -> bool | None:
    seen = [v for v in values if v is not None]
    if any(seen):
        return True
    return False if seen else None


def _jurisdiction(event: Event, records: tuple[ConsentRecord, ...]) -> str | None:
    country = event.context.country if event.context else None
    if country:
        return country.strip().upper()
    for record in records:
        if record.jurisdiction:
            return record.jurisdiction.split("-")[0].strip().upper()
    return None


@lru_cache(maxsize=8192)
def _tcf(text: str) -> TCString | None:
    """Decoded TC string, None when unparseable (memoized: CMP strings repeat a lot)."""
    try:
        return decode_tc_string(text)
    except SignalError:
        return None


@dataclass(frozen=True, slots=True)
class _GppView:
    opted_out: bool
    known_child: bool
    gpc: bool
    tcf_text: str | None
    us_privacy_texts: tuple[str, ...]
    unsupported: tuple[int, ...]


@lru_cache(maxsize=8192)
def _gpp(text: str) -> _GppView | None:
    """What a GPP string says, None when unparseable (memoized)."""
    opted_out = child = gpc = False
    tcf_text: str | None = None
    us_privacy: list[str] = []
    unsupported: list[int] = []
    try:
        for section_id, body in decode_gpp(text).sections.items():
            if section_id == SECTION_USNAT:
                usnat = decode_usnat(body)
                opted_out, child, gpc = (
                    opted_out or usnat.opted_out,
                    child or usnat.known_child,
                    gpc or usnat.gpc,
                )
            elif section_id == SECTION_USPV1:
                us_privacy.append(body)
            elif section_id == SECTION_TCFEUV2:
                tcf_text = body
            else:
                unsupported.append(section_id)
    except SignalError:
        return None
    return _GppView(opted_out, child, gpc, tcf_text, tuple(us_privacy), tuple(unsupported))


def effective_consent(event: Event, snapshot: StateSnapshot) -> EffectiveConsent:
    """Reduce the event's signals and matching stored records to one restrictive view."""
    subjects = subjects_of(event)
    records = tuple(r for r in snapshot.consent if r.subject in subjects)
    signals = event.context.consent if event.context else None
    device = event.device
    unparseable: list[str] = []

    tcf_text = signals.tcf if signals else None
    us_privacy_texts = [signals.us_privacy] if signals and signals.us_privacy else []
    gpp = _gpp(signals.gpp) if signals and signals.gpp else None
    if signals and signals.gpp and gpp is None:
        unparseable.append("gpp")
    if gpp is not None:
        us_privacy_texts.extend(gpp.us_privacy_texts)
        tcf_text = tcf_text or gpp.tcf_text

    us_privacy_opt_out = False
    for text in us_privacy_texts:
        try:
            us_privacy_opt_out = us_privacy_opted_out(text) or us_privacy_opt_out
        except SignalError:
            unparseable.append("us_privacy")

    tcf = _tcf(tcf_text) if tcf_text else None
    if tcf_text and tcf is None:
        unparseable.append("tcf")

    ad_id = device.ad_id if device else None
    limit_ad_tracking = bool(device and device.limit_ad_tracking) or ad_id == ZERO_AD_ID
    event_cookies = signals.ad_cookies if signals else None
    return EffectiveConsent(
        records_found=len(records),
        gpc=bool(signals and signals.gpc) or bool(gpp and gpp.gpc),
        dnt=bool(signals and signals.dnt),
        do_not_sell_or_share=_any_true(r.do_not_sell_or_share for r in records),
        interest_based_ads=_most_restrictive_grant(r.interest_based_ads for r in records),
        ad_cookies=_most_restrictive_grant([event_cookies, *(r.ad_cookies for r in records)]),
        matched_identifier_opt_out=_any_true(r.matched_identifier_opt_out for r in records),
        limit_ad_tracking=limit_ad_tracking,
        jurisdiction=_jurisdiction(event, records),
        tcf=tcf,
        us_privacy_opt_out=us_privacy_opt_out,
        gpp_opt_out=bool(gpp and gpp.opted_out),
        gpp_known_child=bool(gpp and gpp.known_child),
        gpp_unsupported_sections=gpp.unsupported if gpp else (),
        unparseable=tuple(unparseable),
    )
