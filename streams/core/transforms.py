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
from streams.core.leakscan import compact_value
from streams.core.models import Event
from streams.core.rules.model import IdentifierStyle
from streams.core.rules.ruleset import CompiledField

_SCALARS = (str, int, float, bool)
_ONE_WAY = frozenset({"sha256_email", "sha256_phone", "pseudonym", "truncate_ip"})
# The person's own identifiers: pseudonymized as what they are. Any other pseudonymized field
# (the event id) is refused when it equals or contains one of them.
SUBJECT_ID_PATHS = frozenset({"account_id", "profile_id", "device.device_id"})
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_MEMO_MAX_CHARS = 256
_HELD_MIN = 6  # as the leak scan: a shorter id is compared for equality only


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
    return frozenset(c for c in map(_compacted, _ids_of(event)) if c)


def _ids_of(event: Event) -> tuple[str, ...]:
    device = event.device
    ids = (event.account_id, event.profile_id, *((device.device_id, device.ad_id) if device else ()))
    return tuple(i for i in ids if i)


def _contacts_of(event: Event) -> tuple[str, ...]:
    user = event.user
    return tuple(c for c in (user.email, user.phone) if c) if user is not None else ()


def _compacted(value: str) -> str:
    """`leakscan.compact_value`, memoized for short values (a person's ids repeat)."""
    return _compacted_memo(value) if len(value) <= _MEMO_MAX_CHARS else compact_value(value)


_compacted_memo = lru_cache(maxsize=65536)(compact_value)


def _held(compact: str, values: tuple[str, ...]) -> bool:
    """True when `compact` equals one of `values` (compacted), or holds one of at least six."""
    for value in values:
        raw = _compacted(value)
        if raw and (raw == compact or (len(raw) >= _HELD_MIN and raw in compact)):
            return True
    return False


def links_to_subject(value: str, event: Event) -> str | None:
    """What a value that should name only the event (its `event_id`) says of the person:
    `names_the_subject` when it equals or contains one of the person's ids (its pseudonym
    would be the same across the person's events and link them, P10), `raw_value` when it
    does the person's email or phone (blocked as the leak scan blocks, P11's exception)."""
    compact = compact_value(value)
    if not compact:
        return None
    if _held(compact, _ids_of(event)):
        return "names_the_subject"
    if _held(compact, _contacts_of(event)):
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
