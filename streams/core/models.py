"""Typed models of the data contracts (docs/records.md): events, consent, sign-up status, decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Grant = Literal["granted", "denied"]
Verdict = Literal["forward", "block"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Device(_Frozen):
    """The device an event came from."""

    device_id: str | None = None
    platform: str | None = None
    ad_id: str | None = None
    limit_ad_tracking: bool | None = None


class SignalConsent(_Frozen):
    """Consent signals carried by the event itself (browser or SDK)."""

    gpc: bool | None = None
    dnt: bool | None = None
    ad_cookies: Literal["granted", "denied", "unknown"] | None = None
    tcf: str | None = None
    us_privacy: str | None = None
    gpp: str | None = None


class Context(_Frozen):
    """Request context: network, location, page and consent signals."""

    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    region: str | None = None
    page_url: str | None = None
    referrer_url: str | None = None
    consent: SignalConsent | None = None


class User(_Frozen):
    """What is known about the person: contact points and age signals."""

    email: str | None = None
    phone: str | None = None
    kids_profile: bool | None = None
    age_band: Literal["adult", "minor", "unknown"] | None = None


def parse_event_time(value: str | int) -> datetime:
    """Parse an RFC 3339 string or epoch milliseconds into an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("event_time must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("event_time needs a UTC offset (RFC 3339)")
    return parsed.astimezone(UTC)


class Event(_Frozen):
    """An internal event as produced by the company's services."""

    event_id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    event_time: str | int
    account_id: str | None = None
    profile_id: str | None = None
    device: Device | None = None
    context: Context | None = None
    user: User | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event_time")
    @classmethod
    def _valid_time(cls, value: str | int) -> str | int:
        parse_event_time(value)
        return value

    @property
    def occurred_at(self) -> datetime:
        """The event time as an aware UTC datetime."""
        return parse_event_time(self.event_time)


class ConsentRecord(_Frozen):
    """A stored consent choice for one subject (`account:<id>`, `profile:<id>`, `device:<id>`)."""

    subject: str
    updated_at: str | int | None = None
    interest_based_ads: Grant | None = None
    do_not_sell_or_share: bool | None = None
    matched_identifier_opt_out: bool | None = None
    ad_cookies: Grant | None = None
    jurisdiction: str | None = None


class SignupStatus(_Frozen):
    """Where an account stands in the sign-up funnel."""

    account_id: str
    status: Literal["prospect", "in_signup", "member", "former_member"]
    updated_at: str | int | None = None


class StateSnapshot(_Frozen):
    """The state a decision used: recorded with every blocked record so replay is exact."""

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


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one (record, partner) pair."""

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
