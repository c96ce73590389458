"""P10: a resettable advertising identifier is never tied to the account.

The privacy statement says device advertising ids and advertising cookies are "not
associated with your account". A partner record that carried one next to anything derived
from the account or the person would associate them for the partner, so `rules check`
refuses such a rule statically, per event type (one event type = one record shape):

- resettable: fields read from a source tagged `identifier:ad_id` or `identifier:ad_cookie`;
- account- or person-derived: fields read from a source tagged `pii:email`, `pii:phone`, or
  `identifier:internal` (account, profile and device pseudonyms) — except `event_id`, which
  names the event, not the person.

The check reads tags, not transforms, so it holds whatever transform a field names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from streams.core.rules.model import FieldSpec, RuleFile

RESETTABLE_AD_ID_TAGS = frozenset({"identifier:ad_id", "identifier:ad_cookie"})
PERSON_TAGS = frozenset({"pii:email", "pii:phone", "identifier:internal"})
NOT_PERSON_SOURCES = frozenset({"event_id"})  # a per-event id: names no account or person


@dataclass(frozen=True, slots=True)
class Linkage:
    """One event type whose record would carry an ad id together with person-derived fields."""

    event_type: str
    ad_id_fields: tuple[str, ...]
    person_fields: tuple[str, ...]

    @property
    def message(self) -> str:
        """What is wrong, for `rules check`."""
        return (
            f"event '{self.event_type}' puts resettable advertising id field(s) {list(self.ad_id_fields)} "
            f"in the same partner record as account/person-derived field(s) {list(self.person_fields)} "
            "(P10: advertising ids are never associated with the account)"
        )

    @property
    def fix(self) -> str:
        """How to fix it."""
        return "remove either the advertising id or the account/person-derived fields from this event type"


def is_resettable_ad_id(tag: str | None) -> bool:
    """True when a field read from a source tagged `tag` is a resettable advertising id."""
    return tag in RESETTABLE_AD_ID_TAGS


def is_person_derived(source: str, tag: str | None) -> bool:
    """True when a field read from `source` (tagged `tag`) derives from the account or person."""
    return tag in PERSON_TAGS and source not in NOT_PERSON_SOURCES


def ad_id_linkages(
    rule: RuleFile, tag_of: Callable[[str], str | None], as_spec: Callable[[FieldSpec | str], FieldSpec]
) -> Iterator[Linkage]:
    """Every event type of `rule` whose record would tie an advertising id to the person."""
    for event_type, spec in rule.events.items():
        ad_ids: list[str] = []
        person: list[str] = []
        for name, raw in spec.fields.items():
            source = as_spec(raw).source
            tag = tag_of(source)
            if is_resettable_ad_id(tag):
                ad_ids.append(name)
            elif is_person_derived(source, tag):
                person.append(name)
        if ad_ids and person:
            yield Linkage(event_type, tuple(ad_ids), tuple(person))
