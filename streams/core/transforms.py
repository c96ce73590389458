"""Projection: build the partner record from only the fields a rule lists (default deny)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from streams.core.consent import EffectiveConsent
from streams.core.identifiers import (
    coarsen_time,
    normalize_email,
    normalize_phone,
    pseudonym,
    sha256_hex,
    truncate_ip,
    usable_ad_id,
)
from streams.core.leakscan import contains_raw, raw_values_of
from streams.core.models import Event
from streams.core.rules.model import IdentifierStyle
from streams.core.rules.ruleset import CompiledField

_SCALARS = (str, int, float, bool)
_ONE_WAY = frozenset({"sha256_email", "sha256_phone", "pseudonym", "truncate_ip"})
# The person's own identifiers: pseudonymized as what they are. Any other pseudonymized field
# (the event id) is refused when it equals or contains one of them.
SUBJECT_ID_PATHS = frozenset({"account_id", "profile_id", "device.device_id"})
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_MEMO_MAX_CHARS = 512


@dataclass(slots=True)
class Projection:
    """The projected record plus what was dropped and why.

    `derived` names the fields a one-way transform (hash, pseudonym, IP truncation) made
    from the event's own value: the leak scan does not compare those with the raw values.
    `leaks` names pseudonymized fields (an event id) whose value is, or holds, the person's
    email or phone: the record is blocked as the leak scan would block it (`raw_value`).
    """

    record: dict[str, Any] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)
    stripped: list[str] = field(default_factory=list)
    missing_required: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)  # `name: raw_value` findings of the projection


def read_path(event: Event, path: tuple[str, ...]) -> Any:
    """The value at a dotted path of the event, or None when any step is absent."""
    node: Any = event
    for part in path:
        if node is None:
            return None
        if isinstance(node, BaseModel):
            node = getattr(node, part, None)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def subject_identifiers(event: Event) -> frozenset[str]:
    """The person's own ids on the event (account, profile, device, advertising), compacted
    (see `leakscan.raw_values_of`)."""
    device = event.device
    if device is None:
        return _compacted((event.account_id, event.profile_id))
    return _compacted((event.account_id, event.profile_id, device.device_id, device.ad_id))


def contact_points(event: Event) -> frozenset[str]:
    """The person's email and phone, compacted: PII, whose value a decision may not depend on
    beyond the leak scan's stated block (P11)."""
    user = event.user
    return _compacted((user.email, user.phone)) if user is not None else frozenset()


def _compacted(values: tuple[str | None, ...]) -> frozenset[str]:
    """`raw_values_of`, memoized for short values (a person's ids repeat across events and rules)."""
    if sum(len(v) for v in values if v) > _MEMO_MAX_CHARS:
        return raw_values_of(values)
    return _compacted_memo(values)


_compacted_memo = lru_cache(maxsize=16384)(raw_values_of)


def links_to_subject(value: str, event: Event) -> str | None:
    """What a value that should name only the event (its `event_id`) says of the person:
    `names_the_subject` when it equals or contains one of the person's ids (its pseudonym
    would be the same across the person's events and link them, P10), `raw_value` when it
    does the person's email or phone (blocked as the leak scan blocks, P11's exception)."""
    compact = raw_values_of([value])
    if not compact:
        return None
    if contains_raw(value, subject_identifiers(event), compact):
        return "names_the_subject"
    if event.user is not None and contains_raw(value, contact_points(event), compact):
        return "raw_value"
    return None


def _apply(
    spec: CompiledField,
    value: Any,
    event: Event,
    consent: EffectiveConsent,
    style: IdentifierStyle,
    key: bytes | None,
) -> tuple[Any, str | None]:
    """Transform one value: (output, None) or (None, why it was dropped)."""
    transform = spec.spec.transform
    if transform == "coarsen_time":
        return coarsen_time(event.occurred_at, spec.spec.granularity), None
    if transform == "keep":
        if not isinstance(value, _SCALARS):
            return None, "not_scalar"
        if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
            return None, "out_of_range"  # no 64-bit JSON writer (nor a partner) can take it
        text = value if isinstance(value, str) else str(value)
        refused = spec.refuse_kept(text)
        return (None, refused) if refused else (value, None)
    if not isinstance(value, str):
        return None, "not_text"
    if transform in ("sha256_email", "sha256_phone"):
        if consent.matched_identifier_opt_out is not False:
            return None, "matched_identifier_opt_out"
        if transform == "sha256_email":
            normalized = normalize_email(value, style.gmail_remove_dots)
        else:
            normalized = normalize_phone(value, style.default_region, style.phone)
        return (sha256_hex(normalized), None) if normalized else (None, "invalid")
    if transform == "pseudonym":
        if key is None:
            return None, "no_partner_key"
        return pseudonym(key, spec.spec.source, value), None
    if transform == "truncate_ip":
        truncated = truncate_ip(value)
        return (truncated, None) if truncated else (None, "invalid")
    if transform == "ad_id":
        ad_id = usable_ad_id(value, consent.limit_ad_tracking)
        return (ad_id, None) if ad_id else (None, "limit_ad_tracking_or_invalid")
    return None, "unknown_transform"


def project(
    event: Event,
    fields: tuple[CompiledField, ...],
    consent: EffectiveConsent,
    style: IdentifierStyle,
    key: bytes | None,
) -> Projection:
    """Project the listed fields with their transforms; everything else is dropped."""
    out = Projection()
    for spec in fields:
        value = read_path(event, spec.path)
        if value is None:
            if spec.spec.required:
                out.missing_required.append(spec.name)
            continue
        link: str | None = None
        if spec.spec.transform == "pseudonym" and spec.spec.source not in SUBJECT_ID_PATHS:
            link = links_to_subject(value, event) if isinstance(value, str) else None
        result: Any
        why: str | None
        if link == "names_the_subject":
            result, why = None, link
        else:
            result, why = _apply(spec, value, event, consent, style, key)
        if why is not None:
            out.stripped.append(f"{spec.name}: {why}")
            if spec.spec.required:
                out.missing_required.append(spec.name)
            continue
        out.record[spec.name] = result
        if spec.spec.transform in _ONE_WAY:
            out.derived.add(spec.name)
        if link == "raw_value":
            out.leaks.append(f"{spec.name}: raw_value")
    return out
