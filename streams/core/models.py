"""Typed models of the data contracts (docs/records.md): events, consent, sign-up status, decisions."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

Grant = Literal["granted", "denied"]
Verdict = Literal["forward", "block"]

# Internal ids are visible ASCII only (no whitespace, control, invisible or look-alike
# characters) and at most 128 characters (a UUID is 36): an id that differs from the
# stored one by an invisible character would miss that person's stored denial.
MAX_ID_CHARS = 128
INTERNAL_ID_PATTERN = rf"^[\x21-\x7e]{{1,{MAX_ID_CHARS}}}$"
InternalId = Annotated[str, StringConstraints(pattern=INTERNAL_ID_PATTERN)]
# ISO 3166 country (or EU/EEA), optionally with a subdivision: US, US-CA, EU.
Jurisdiction = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,3})?$")]

# The datetime range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
MIN_EPOCH_MS = -62_135_596_800_000
MAX_EPOCH_MS = 253_402_300_799_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII)
# Why 64: a key name is reported in details; longer names are cut, never carried whole.
_MAX_REPORTED_KEY_CHARS = 64


_Model = TypeVar("_Model", bound=BaseModel)
_set_attribute = object.__setattr__


def assemble(model: type[_Model], values: dict[str, Any]) -> _Model:
    """A model built from values that are already valid and name every field, unvalidated.

    What `model_construct` does for such values (the state tables' lookups, once per state
    record a decision reads), without its per-field alias and default passes: a third of
    its cost. `values` becomes the model's own; the caller must not keep it.
    """
    built = model.__new__(model)
    _set_attribute(built, "__dict__", values)
    _set_attribute(built, "__pydantic_fields_set__", set(values))
    _set_attribute(built, "__pydantic_extra__", None)
    _set_attribute(built, "__pydantic_private__", None)
    return built


class _Frozen(BaseModel):
    """State records: strict types (no bool for a number, no number for a string)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)


class _Section(BaseModel):
    """A section of the event: strict types; undeclared keys kept so they can be reported."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)


def reported_key(key: str) -> str:
    """A key name safe to put in details and metric labels: ASCII-escaped and cut short."""
    return ascii(key)[1:-1][:_MAX_REPORTED_KEY_CHARS]


def _undeclared(prefix: str, section: BaseModel | None) -> list[str]:
    extra = section.model_extra if section is not None else None
    return [f"{prefix}{reported_key(k)}" for k in extra] if extra else []


# The platforms the guard knows. Platform names compare case- and width-insensitively
# (`Web`, `ＷＥＢ`, ` web ` are `web`): normalized once, when the event is decoded. A platform
# missing or outside this list is read the strictest way by the consent checks (as web).
PLATFORMS = frozenset({"ios", "android", "tv", "web"})
APP_PLATFORMS = PLATFORMS - {"web"}
_MAX_PLATFORM_CHARS = 64


def _normalized_enum(value: str | None) -> str | None:
    """An enumerated value as compared: NFKC, no surrounding white space, case-folded.

    Invisible format characters are removed (`w\u200beb` is `web`); a value longer than
    any member of an enumeration is kept as it is (it matches none).
    """
    if value is None or (value.isascii() and value.islower() and value.strip() == value):
        return value  # the common case: already normal
    if len(value) > _MAX_PLATFORM_CHARS:
        return value
    text = "".join(c for c in unicodedata.normalize("NFKC", value) if unicodedata.category(c) != "Cf")
    return text.strip().casefold()


Platform = Annotated[str | None, AfterValidator(_normalized_enum)]


class Device(_Section):
    """The device an event came from (`platform` normalized: see `PLATFORMS`)."""

    device_id: InternalId | None = None
    platform: Platform = None
    ad_id: str | None = None
    limit_ad_tracking: bool | None = None


class SignalConsent(_Section):
    """Consent signals carried by the event itself (browser or SDK). A closed section."""

    gpc: bool | None = None
    dnt: bool | None = None
    ad_cookies: Literal["granted", "denied", "unknown"] | None = None
    tcf: str | None = None
    us_privacy: str | None = None
    gpp: str | None = None


class Context(_Section):
    """Request context: network, location, page and consent signals."""

    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    region: str | None = None
    page_url: str | None = None
    referrer_url: str | None = None
    consent: SignalConsent | None = None


class User(_Section):
    """What is known about the person: contact points and age signals. A closed section."""

    email: str | None = None
    phone: str | None = None
    kids_profile: bool | None = None
    age_band: Literal["adult", "minor", "unknown"] | None = None


# Why cached: an event's time is parsed when the event is validated and again by each
# rule that coarsens it; a handful of entries hold the event being decided.
@lru_cache(maxsize=64, typed=True)  # typed: True must never hit the entry of 1
def parse_event_time(value: str | int) -> datetime:
    """Parse an RFC 3339 string or epoch milliseconds into an aware UTC datetime.

    Raises `ValueError` for anything else: a boolean, a string that is not RFC 3339 with a
    UTC offset, or a time outside years 1..9999 (also after applying the offset).
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("event_time must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
            raise ValueError("epoch milliseconds out of range")
        return _EPOCH + timedelta(milliseconds=value)
    if not _RFC3339.fullmatch(value):
        raise ValueError("not an RFC 3339 time with a UTC offset")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("not a representable time") from None


def _checked_time(value: str | int) -> str | int:
    parse_event_time(value)
    return value


def _checked_optional_time(value: str | int | None) -> str | int | None:
    return None if value is None else _checked_time(value)


Time = Annotated[str | int, AfterValidator(_checked_time)]
OptionalTime = Annotated[str | int | None, AfterValidator(_checked_optional_time)]


class Event(_Section):
    """An internal event as produced by the company's services.

    `user` and `context.consent` are closed: a key the guard does not know there is a
    signal it cannot read (`unknown_signals`). Other sections are open: undeclared keys
    never leave and are only counted (`undeclared_fields`).
    """

    event_id: InternalId
    event_type: str = Field(min_length=1)
    event_time: Time
    account_id: InternalId | None = None
    profile_id: InternalId | None = None
    device: Device | None = None
    context: Context | None = None
    user: User | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @property
    def occurred_at(self) -> datetime:
        """The event time as an aware UTC datetime."""
        return parse_event_time(self.event_time)

    @property
    def unknown_signals(self) -> tuple[str, ...]:
        """Paths of undeclared keys in the closed sections `user` and `context.consent`."""
        consent = self.context.consent if self.context else None
        return (*_undeclared("user.", self.user), *_undeclared("context.consent.", consent))

    @property
    def undeclared_fields(self) -> tuple[str, ...]:
        """Paths of undeclared keys in the open sections (top level, `device`, `context`)."""
        device, context = self.device, self.context
        if not (  # the common case, asked once per input by the shell: nothing undeclared
            self.__pydantic_extra__
            or (device is not None and device.__pydantic_extra__)
            or (context is not None and context.__pydantic_extra__)
        ):
            return ()
        return (
            *_undeclared("", self),
            *_undeclared("device.", self.device),
            *_undeclared("context.", self.context),
        )


class Envelope(_Frozen):
    """The members of an event that decide whether any rule can receive it (the type gate).

    An event whose type no rule can receive is read only this far: it is blocked for every
    partner as `event_type_not_allowed`, and needs no validated model.
    """

    event_id: InternalId
    event_type: str = Field(min_length=1)


class ConsentRecord(_Frozen):
    """A stored consent choice for one subject (`account:<id>`, `profile:<id>`, `device:<id>`)."""

    # Not pattern-checked here: the state tables check a record's key and subject, and a
    # recorded snapshot may carry subjects as keyed hashes (redacted and encrypted modes).
    # A subject that is not a valid id matches no event, whose ids are checked strictly.
    subject: str
    updated_at: OptionalTime = None
    interest_based_ads: Grant | None = None
    do_not_sell_or_share: bool | None = None
    matched_identifier_opt_out: bool | None = None
    ad_cookies: Grant | None = None
    jurisdiction: Jurisdiction | None = None


class SignupStatus(_Frozen):
    """Where an account stands in the sign-up funnel."""

    account_id: InternalId
    status: Literal["prospect", "in_signup", "member", "former_member"]
    updated_at: OptionalTime = None


class StateSnapshot(BaseModel):
    """The state a decision used: recorded with every blocked record so replay is exact."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    consent: tuple[ConsentRecord, ...] = ()
    signup_status: SignupStatus | None = None
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Malformed:
    """Input that could not be decoded or validated; kept as raw bytes.

    `reason` is the reason code every partner's block carries: `malformed`, or for Avro
    input `schema_unknown` / `schema_incompatible` when its writer schema cannot be used.
    """

    raw: bytes
    error: str
    reason: str = "malformed"


# Not `frozen`: two decisions are built per input, and a frozen dataclass's __init__ costs
# about four times a plain one's (measured in benchmarks/RESULTS.md). Nothing mutates one.
@dataclass(slots=True)
class Decision:
    """The verdict for one (record, partner) pair; never changed once built."""

    partner: str
    rule_id: str
    ruleset_digest: str
    event_id: str | None
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    record: dict[str, Any] | None = None
    details: tuple[str, ...] = ()
    stripped: tuple[str, ...] = ()

    @property
    def forwarded(self) -> bool:
        """True when the record goes to the partner."""
        return self.verdict == "forward"
