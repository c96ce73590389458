"""Effective consent: the most restrictive of the event's own signals and every matching record."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from streams.core.identifiers import is_zero_ad_id
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.regions import UNPLACED, placed
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

# The European Economic Area's member countries (ISO 3166-1 alpha-2).
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
# A jurisdiction inside the EEA: a member country, or the area named as a whole.
EEA_REGIONS = EEA | {"EU", "EEA"}
# Where the GDPR (or its UK and Swiss equivalents) applies.
GDPR_REGIONS = EEA_REGIONS | {"GB", "CH"}


# Why 1,024: CMP strings repeat across a user's events and are rarely longer than a few
# hundred characters; memoizing longer ones would let a few records pin megabytes.
MEMO_MAX_CHARS = 1_024


@dataclass(slots=True)  # not frozen: built once per receivable event, never changed (see Decision)
class EffectiveConsent:
    """Everything the consent checks need, already reduced to the most restrictive value.

    Where several signals answer one question, all of them are kept (`jurisdictions`,
    `tcf`) or folded so that any "no" wins.
    """

    records_found: int
    gpc: bool
    dnt: bool
    do_not_sell_or_share: bool | None
    interest_based_ads: str | None
    ad_cookies: str | None
    matched_identifier_opt_out: bool | None
    limit_ad_tracking: bool
    jurisdictions: tuple[str, ...]
    tcf: tuple[TCString, ...]
    us_privacy_opt_out: bool
    gpp_opt_out: bool
    gpp_known_child: bool
    gpp_unsupported_sections: tuple[int, ...]
    unparseable: tuple[str, ...]

    @property
    def gdpr_applies(self) -> bool:
        """True when any jurisdiction the event falls under is under the GDPR (EEA, UK, Switzerland),
        or is one the guard cannot place (the strictest reading)."""
        return any(j in GDPR_REGIONS or j == UNPLACED for j in self.jurisdictions)

    @property
    def tcf_unparseable(self) -> bool:
        """True when a TC string was present (alone or inside GPP) but could not be decoded."""
        return any(u in ("tcf", "gpp.tcfeuv2") for u in self.unparseable)


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


def _jurisdictions(event: Event, records: Sequence[ConsentRecord]) -> tuple[str, ...]:
    """Every jurisdiction the event's country and its matching stored records name (event first).

    Each as its country (`US-CA` is `US`), checked against ISO 3166: a code the guard cannot
    place (`UK`, `XX`) is `UNPLACED`, in no rule's scope and under the GDPR.
    """
    found: list[str] = []
    country = event.context.country if event.context else None
    if country:
        found.append(placed(country))
    for record in records:
        if record.jurisdiction:
            found.append(placed(record.jurisdiction))
    return tuple(dict.fromkeys(found))


def _decode_tcf(text: str) -> TCString | None:
    try:
        return decode_tc_string(text)
    except SignalError:
        return None


_decode_tcf_memo = lru_cache(maxsize=8192)(_decode_tcf)


def _tcf(text: str) -> TCString | None:
    """Decoded TC string, None when unparseable (short strings memoized: CMP strings repeat)."""
    return _decode_tcf_memo(text) if len(text) <= MEMO_MAX_CHARS else _decode_tcf(text)


@dataclass(frozen=True, slots=True)
class _GppView:
    opted_out: bool
    known_child: bool
    gpc: bool
    tcf_text: str | None
    us_privacy_texts: tuple[str, ...]
    unsupported: tuple[int, ...]


def _decode_gpp(text: str) -> _GppView | None:
    """What a GPP string says, None when unparseable."""
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


_decode_gpp_memo = lru_cache(maxsize=8192)(_decode_gpp)


def _gpp(text: str) -> _GppView | None:
    """What a GPP string says, None when unparseable (short strings memoized)."""
    return _decode_gpp_memo(text) if len(text) <= MEMO_MAX_CHARS else _decode_gpp(text)


def effective_consent(event: Event, snapshot: StateSnapshot) -> EffectiveConsent:
    """Reduce the event's signals and matching stored records to one restrictive view."""
    subjects = subjects_of(event)
    records = [r for r in snapshot.consent if r.subject in subjects]
    signals = event.context.consent if event.context else None
    device = event.device
    unparseable: list[str] = []

    tcf_texts = [("tcf", signals.tcf)] if signals and signals.tcf else []
    us_privacy_texts = [signals.us_privacy] if signals and signals.us_privacy else []
    gpp = _gpp(signals.gpp) if signals and signals.gpp else None
    if signals and signals.gpp and gpp is None:
        unparseable.append("gpp")
    if gpp is not None:
        us_privacy_texts.extend(gpp.us_privacy_texts)
        if gpp.tcf_text is not None:  # counted as well as the event's own TC string, never instead
            tcf_texts.append(("gpp.tcfeuv2", gpp.tcf_text))

    us_privacy_opt_out = False
    for text in us_privacy_texts:
        try:
            us_privacy_opt_out = us_privacy_opted_out(text) or us_privacy_opt_out
        except SignalError:
            unparseable.append("us_privacy")

    tcf: list[TCString] = []
    for source, text in tcf_texts:
        decoded = _tcf(text)
        if decoded is None:
            unparseable.append(source)
        else:
            tcf.append(decoded)

    ad_id = device.ad_id if device else None
    limit_ad_tracking = bool(device and device.limit_ad_tracking) or is_zero_ad_id(ad_id)
    event_cookies = signals.ad_cookies if signals else None
    return EffectiveConsent(
        records_found=len(records),
        gpc=bool(signals and signals.gpc) or bool(gpp and gpp.gpc),
        dnt=bool(signals and signals.dnt),
        do_not_sell_or_share=_any_true([r.do_not_sell_or_share for r in records]),
        interest_based_ads=_most_restrictive_grant([r.interest_based_ads for r in records]),
        ad_cookies=_most_restrictive_grant([event_cookies, *[r.ad_cookies for r in records]]),
        matched_identifier_opt_out=_any_true([r.matched_identifier_opt_out for r in records]),
        limit_ad_tracking=limit_ad_tracking,
        jurisdictions=_jurisdictions(event, records),
        tcf=tuple(tcf),
        us_privacy_opt_out=us_privacy_opt_out,
        gpp_opt_out=bool(gpp and gpp.opted_out),
        gpp_known_child=bool(gpp and gpp.known_child),
        gpp_unsupported_sections=gpp.unsupported if gpp else (),
        unparseable=tuple(dict.fromkeys(unparseable)),
    )
