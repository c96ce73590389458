"""Opt-out and deletion notices (P12): who received what about a subject, and what to tell them.

Pure functions, no clock and no Kafka: the shell passes the time in and writes what comes out.

- **Forwarded markers.** For every forward that carried an identifier of the subject, the
  shell keeps one marker per (partner, subject): the time of the last such forward, and per
  output field the identifier form and the values the partner received (its keyed
  pseudonyms, SHA-256 of the normalized email or phone, the advertising id: never a raw
  identifier, since only a projected record's values are kept). `marker_update` says whether
  a forward changes the marker (new values, or the stored time older than `refresh_ms`), so
  most forwards write nothing.
- **Notice state.** Per subject, the opt-out choices the notice path last acted on and the
  time of that consent change: a change at or before that time (a replay, a restart) is
  ignored, and only choices that were not in effect before are notified (a second identical
  opt-out sends nothing; a re-grant then a new opt-out sends again).
- **Notices.** `decide_notices(change, previous, markers, plans, now_ms, lookback_ms)` gives
  one notice per partner with a marker inside the lookback window (and per identifier group:
  P10, an advertising id never travels in one record with person-derived identifiers), the
  new notice state, and which markers to delete (all of the subject's, after a deletion).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from streams.core.consent import subjects_of
from streams.core.models import ConsentRecord, Event
from streams.core.rules.linkage import is_person_derived, is_resettable_ad_id
from streams.core.rules.ruleset import CompiledRule, Ruleset

MARKER_FORMAT = "partner-guard.forwarded.v1"
NOTICE_STATE_FORMAT = "partner-guard.notice-state.v1"
NOTICE_FORMAT = "partner-guard.optout.v1"
# Why 4: a person's email or ad id changes rarely; the partner can link older values through
# the other identifiers of the same records. Bounds what one marker can grow to.
MAX_VALUES_PER_FIELD = 4
# Why 64: a rule names a handful of identifier fields; a hostile marker cannot grow past this.
MAX_FIELDS = 64
MAX_VALUE_CHARS = 128
MARKER_PREFIX = "f|"
STATE_PREFIX = "n|"
Form = Literal["pseudonym", "sha256_email", "sha256_phone", "ad_id", "other"]
Group = Literal["person", "ad_id"]
# The opt-out choices a consent record can hold, in a fixed order.
CHOICES = (
    "do_not_sell_or_share",
    "interest_based_ads_denied",
    "matched_identifier_opt_out",
    "ad_cookies_declined",
)
MATCHED_FORMS = frozenset({"sha256_email", "sha256_phone"})


@dataclass(frozen=True, slots=True)
class IdentifierField:
    """An output field that identifies the person or the device, and in which form."""

    name: str
    form: Form
    group: Group


@dataclass(frozen=True, slots=True)
class NoticePlan:
    """What one partner's rule means for notices: its identifier fields per event type."""

    partner: str
    topic: str
    kinds: frozenset[str]
    fields: Mapping[str, tuple[IdentifierField, ...]]  # event type -> identifier fields

    @property
    def tracked(self) -> bool:
        """True when forwards to this partner are remembered (it gets notices and receives identifiers)."""
        return bool(self.kinds) and any(self.fields.values())


def _form(transform: str) -> Form:
    if transform in ("pseudonym", "sha256_email", "sha256_phone", "ad_id"):
        return transform  # type: ignore[return-value]
    return "other"


def plan_of(rule: CompiledRule, tags: Mapping[str, str]) -> NoticePlan:
    """The notice plan of one rule (identifier fields by their source's privacy tag, as P10 reads them)."""
    fields: dict[str, tuple[IdentifierField, ...]] = {}
    for event_type, spec in rule.events.items():
        found = []
        for compiled in spec.fields:
            source, tag = compiled.spec.source, tags.get(compiled.spec.source)
            if is_resettable_ad_id(tag):
                found.append(IdentifierField(compiled.name, _form(compiled.spec.transform), "ad_id"))
            elif is_person_derived(source, tag):
                found.append(IdentifierField(compiled.name, _form(compiled.spec.transform), "person"))
        fields[event_type] = tuple(found)
    return NoticePlan(rule.partner, rule.source.optout_topic, rule.source.optout_notices.sends, fields)


def plans_of(ruleset: Ruleset) -> dict[str, NoticePlan]:
    """Every rule's notice plan, by partner, in rule order."""
    return {rule.partner: plan_of(rule, ruleset.tags) for rule in ruleset.rules}


# -- markers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """What one partner received about one subject: when last, and which identifiers."""

    at_ms: int
    forms: Mapping[str, Form]  # field -> identifier form
    groups: Mapping[str, Group]  # field -> P10 group
    values: Mapping[str, tuple[str, ...]]  # field -> values received, oldest first

    def encode(self) -> bytes:
        """The marker's record value on the forwarded topic."""
        return orjson.dumps(
            {
                "format": MARKER_FORMAT,
                "at_ms": self.at_ms,
                "ids": {
                    name: {"form": self.forms[name], "group": self.groups[name], "values": list(values)}
                    for name, values in self.values.items()
                },
            }
        )


class InvalidRecordError(ValueError):
    """A forwarded-topic or consent record the notice path cannot read (no identifiers in the message)."""


def _bounded_text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE_CHARS:
        raise InvalidRecordError("identifier value is not a short string")
    return value


def decode_marker(raw: bytes) -> Marker:
    """A marker from its record value; raises `InvalidRecordError`."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRecordError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT:
        raise InvalidRecordError("not a forwarded marker")
    at_ms, ids = doc.get("at_ms"), doc.get("ids")
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms < 0 or not isinstance(ids, dict):
        raise InvalidRecordError("marker time or ids invalid")
    if len(ids) > MAX_FIELDS:
        raise InvalidRecordError("too many fields")
    forms: dict[str, Form] = {}
    groups: dict[str, Group] = {}
    values: dict[str, tuple[str, ...]] = {}
    for name, entry in ids.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("values"), list):
            raise InvalidRecordError("marker field invalid")
        form, group = entry.get("form"), entry.get("group")
        if form not in ("pseudonym", "sha256_email", "sha256_phone", "ad_id", "other"):
            raise InvalidRecordError("unknown identifier form")
        if group not in ("person", "ad_id"):
            raise InvalidRecordError("unknown identifier group")
        kept = tuple(_bounded_text(v) for v in entry["values"][-MAX_VALUES_PER_FIELD:])
        forms[_bounded_text(name)], groups[name], values[name] = form, group, kept
    return Marker(at_ms, forms, groups, values)


def _union(old: tuple[str, ...], new: Iterable[str]) -> tuple[str, ...]:
    merged = [v for v in old]
    for value in new:
        if value in merged:
            merged.remove(value)
        merged.append(value)  # the newest last
    return tuple(merged[-MAX_VALUES_PER_FIELD:])


def merge_markers(old: Marker | None, new: Marker) -> Marker:
    """Both markers in one: every value (the newest `MAX_VALUES_PER_FIELD` per field), the later time.

    Commutative in what it keeps for a field with at most that many values, so markers written
    by several instances for one subject (their forwards) add up whatever order they are read in.
    """
    if old is None:
        return new
    values = dict(old.values)
    forms, groups = dict(old.forms), dict(old.groups)
    for name, received in new.values.items():
        values[name] = _union(values.get(name, ()), received)
        forms[name], groups[name] = new.forms[name], new.groups[name]
    if len(values) > MAX_FIELDS:
        return new
    return Marker(max(old.at_ms, new.at_ms), forms, groups, values)


def forwarded_ids(
    record: Mapping[str, Any], fields: tuple[IdentifierField, ...]
) -> list[tuple[IdentifierField, str]]:
    """The identifier values a partner record carries (only string values: what was sent)."""
    found = []
    for spec in fields:
        value = record.get(spec.name)
        if isinstance(value, str) and 0 < len(value) <= MAX_VALUE_CHARS:
            found.append((spec, value))
    return found


def marker_update(
    existing: Marker | None, ids: list[tuple[IdentifierField, str]], now_ms: int, refresh_ms: int
) -> Marker | None:
    """The marker after a forward of `ids`, or None when it needs no write (nothing new, and
    the stored time is younger than `refresh_ms`)."""
    if not ids:
        return None
    fresh = existing is not None and now_ms - existing.at_ms < refresh_ms
    if fresh and existing is not None and all(value in existing.values.get(s.name, ()) for s, value in ids):
        return None
    new = Marker(
        now_ms,
        {spec.name: spec.form for spec, _ in ids},
        {spec.name: spec.group for spec, _ in ids},
        {spec.name: (value,) for spec, value in ids},
    )
    return merge_markers(existing, new)


def marker_key(partner: str, subject: str) -> bytes:
    """The forwarded topic's key of one (partner, subject) marker."""
    return f"{MARKER_PREFIX}{partner}|{subject}".encode()


def state_key(subject: str) -> bytes:
    """The forwarded topic's key of one subject's notice state."""
    return f"{STATE_PREFIX}{subject}".encode()


def marker_subjects(event: Event) -> tuple[str, ...]:
    """The subjects a forward of `event` is remembered under (its consent subjects)."""
    return subjects_of(event)


# -- notice state and consent changes ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoticeState:
    """The consent change the notice path last acted on for one subject."""

    seen_ms: int
    choices: frozenset[str]

    def encode(self) -> bytes:
        """The state's record value on the forwarded topic."""
        ordered = [c for c in CHOICES if c in self.choices]
        return orjson.dumps({"format": NOTICE_STATE_FORMAT, "seen_ms": self.seen_ms, "choices": ordered})


def decode_state(raw: bytes) -> NoticeState:
    """A notice state from its record value; raises `InvalidRecordError`."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRecordError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != NOTICE_STATE_FORMAT:
        raise InvalidRecordError("not a notice state")
    seen, choices = doc.get("seen_ms"), doc.get("choices")
    if isinstance(seen, bool) or not isinstance(seen, int) or not isinstance(choices, list):
        raise InvalidRecordError("notice state invalid")
    if not all(c in CHOICES for c in choices):
        raise InvalidRecordError("unknown choice")
    return NoticeState(seen, frozenset(choices))


def opt_out_choices(record: ConsentRecord) -> frozenset[str]:
    """The opt-outs a consent record holds (GPC reaches the consent topic as do-not-sell/share)."""
    found = []
    if record.do_not_sell_or_share:
        found.append("do_not_sell_or_share")
    if record.interest_based_ads == "denied":
        found.append("interest_based_ads_denied")
    if record.matched_identifier_opt_out:
        found.append("matched_identifier_opt_out")
    if record.ad_cookies == "denied":
        found.append("ad_cookies_declined")
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One record of the consent topic as the notice path reads it.

    `kind` "deletion": a tombstone or a deletion request. `at_ms`: the record's `updated_at`
    (the Kafka timestamp for a tombstone, which has none).
    """

    subject: str
    kind: Literal["update", "deletion"]
    at_ms: int
    choices: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Notice:
    """One notice to one partner, in the identifiers that partner received."""

    partner: str
    topic: str
    kind: Literal["opt_out", "deletion"]
    changed_at_ms: int
    choices: tuple[str, ...]
    identifiers: Mapping[str, tuple[str, ...]]
    ruleset_digest: str

    @property
    def notice_id(self) -> str:
        """A stable id: the same change gives the same id (the partner can drop repeats too).

        SHA-256 over values the partner already holds, the kind and the time: no raw identifier.
        """
        body = orjson.dumps([self.partner, self.kind, self.changed_at_ms, sorted(self.identifiers.items())])
        return hashlib.sha256(body).hexdigest()

    def record(self) -> tuple[bytes, bytes]:
        """Key (the notice id) and value of the notice record."""
        notice_id = self.notice_id
        value = orjson.dumps(
            {
                "format": NOTICE_FORMAT,
                "notice_id": notice_id,
                "partner": self.partner,
                "kind": self.kind,
                "choices": list(self.choices),
                "changed_at": rfc3339_ms(self.changed_at_ms),
                "identifiers": {name: list(values) for name, values in self.identifiers.items()},
                "ruleset_digest": self.ruleset_digest,
            }
        )
        return notice_id.encode(), value


def rfc3339_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


@dataclass(slots=True)
class NoticeOutcome:
    """What one consent change gives: notices, the new notice state, markers to delete."""

    notices: list[Notice] = field(default_factory=list)
    state: NoticeState | None = None  # written when `write_state`; None with it: delete
    write_state: bool = False
    delete_markers: list[str] = field(default_factory=list)  # partners
    expired_markers: list[str] = field(default_factory=list)  # partners: outside the window


def expired(marker: Marker, now_ms: int, lookback_ms: int, refresh_ms: int) -> bool:
    """True when the last forward is older than the window (the stored time may lag a forward
    by up to `refresh_ms`, so the window is widened by that much: never too short)."""
    return marker.at_ms + refresh_ms < now_ms - lookback_ms


def _groups(marker: Marker, only_matched: bool) -> list[dict[str, tuple[str, ...]]]:
    """The marker's identifiers, one mapping per P10 group (person first, then ad id)."""
    out = []
    for group in ("person", "ad_id"):
        ids = {
            name: values
            for name, values in marker.values.items()
            if marker.groups[name] == group
            and values
            and (not only_matched or marker.forms[name] in MATCHED_FORMS)
        }
        if ids:
            out.append(ids)
    return out


def decide_notices(
    change: ConsentChange,
    previous: NoticeState | None,
    markers: Mapping[str, Marker],
    plans: Mapping[str, NoticePlan],
    digest: str,
    now_ms: int,
    lookback_ms: int,
    refresh_ms: int,
) -> NoticeOutcome:
    """The notices one consent change gives, in rule order (module docstring)."""
    out = NoticeOutcome()
    live: dict[str, Marker] = {}
    for partner, kept in markers.items():
        if expired(kept, now_ms, lookback_ms, refresh_ms):
            out.expired_markers.append(partner)
        else:
            live[partner] = kept
    if change.kind == "deletion":
        out.delete_markers = list(markers)
        out.write_state = previous is not None
        for partner, plan in plans.items():
            found = live.get(partner)
            if found is None or "deletion" not in plan.kinds:
                continue
            for ids in _groups(found, False):
                out.notices.append(Notice(partner, plan.topic, "deletion", change.at_ms, (), ids, digest))
        return out
    if previous is not None and change.at_ms <= previous.seen_ms:
        return out  # replayed, or older than what was acted on
    before = previous.choices if previous is not None else frozenset()
    new = change.choices - before
    if change.choices or before:  # advances the time a replay is measured against
        out.state, out.write_state = NoticeState(change.at_ms, change.choices), True
    if not new:
        return out
    only_matched = new <= {"matched_identifier_opt_out"}
    choices = tuple(c for c in CHOICES if c in new)
    for partner, plan in plans.items():
        found = live.get(partner)
        if found is None or "opt_out" not in plan.kinds:
            continue
        for ids in _groups(found, only_matched):
            out.notices.append(Notice(partner, plan.topic, "opt_out", change.at_ms, choices, ids, digest))
    return out
