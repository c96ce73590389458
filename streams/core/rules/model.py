"""The allow-rule file format, one YAML file per partner (see docs/rules.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Transform = Literal[
    "keep", "sha256_email", "sha256_phone", "pseudonym", "truncate_ip", "coarsen_time", "ad_id"
]
Status = Literal["prospect", "in_signup", "member", "former_member"]

ALLOWED_EVENT_TYPES = frozenset(
    {
        "signup_started",
        "signup_step_completed",
        "plan_selected",
        "signup_completed",
        "app_install",
        "app_open",
        "site_visit",
    }
)
CONTENT_EVENT_TYPES = frozenset(
    {
        "title_selected",
        "playback_started",
        "playback_progress",
        "playback_stopped",
        "title_rated",
        "search",
        "page_view",
        "row_impression",
        "watch_history",
    }
)

TRANSFORMS_BY_TAG: dict[str, frozenset[str]] = {
    "none": frozenset({"keep"}),
    "time": frozenset({"keep", "coarsen_time"}),
    "pii:email": frozenset({"sha256_email"}),
    "pii:phone": frozenset({"sha256_phone"}),
    "pii:ip": frozenset({"truncate_ip"}),
    "identifier:internal": frozenset({"pseudonym"}),
    "identifier:ad_id": frozenset({"ad_id"}),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FieldSpec(_Strict):
    """One output field: where it comes from and how it is transformed."""

    source: str = Field(alias="from", description="dotted path in the internal event")
    transform: Transform = "keep"
    granularity: Literal["minute", "hour", "day"] = "hour"
    values: tuple[str, ...] | None = Field(None, description="allowed values (keep only)")
    pattern: str | None = Field(None, description="regex a kept value must fully match")
    max_length: int | None = Field(
        None, ge=1, le=1024, description="longest kept value; implied by values/pattern when absent"
    )
    required: bool = False


class EventSpec(_Strict):
    """What one allowed event type may carry."""

    fields: dict[str, FieldSpec | str] = Field(min_length=1)
    signup_status: tuple[Status, ...] | None = None


class TcfRequirement(_Strict):
    """The TCF legal basis a partner needs where the GDPR applies."""

    vendor_id: int = Field(ge=1, le=65535)
    purposes: tuple[int, ...] = Field((1, 7), min_length=1)


class ConsentRequirements(_Strict):
    """The consent a partner needs beyond the opt-outs every rule honours."""

    interest_based_ads: Literal["required", "not_required"] = "required"
    ad_cookies_on_web: Literal["required", "not_required"] = "required"
    tcf: TcfRequirement | None = None
    honour_dnt: bool = False


class SignupStatusRule(_Strict):
    """Which sign-up statuses may be shared (e.g. to avoid advertising sign-up to members)."""

    allowed: tuple[Status, ...] = Field(min_length=1)
    when_missing: Literal["block", "allow"] = "block"


class IdentifierStyle(_Strict):
    """How the partner expects hashed identifiers to be normalized."""

    phone: Literal["e164", "digits"] = "e164"
    default_region: str = Field("US", pattern=r"^[A-Z]{2}$")
    gmail_remove_dots: bool = False


NoticeKind = Literal["opt_out", "deletion"]
NOTICE_KINDS: tuple[NoticeKind, ...] = ("opt_out", "deletion")


class OptoutNotices(_Strict):
    """Which opt-out and deletion notices the partner gets, and on which topic.

    `kinds: none` (or `optout_notices: none`) sends none; a rule that projects an identifier
    must then say why in `reason` (`rules check`).
    """

    kinds: tuple[NoticeKind, ...] | Literal["none"] = NOTICE_KINDS
    topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    reason: str | None = Field(None, min_length=1, max_length=500)

    @property
    def sends(self) -> frozenset[str]:
        """The kinds of notices the partner gets (empty for `none`)."""
        return frozenset() if self.kinds == "none" else frozenset(self.kinds)


class RuleFile(_Strict):
    """A partner's allow-rule."""

    partner: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    rule_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    description: str = ""
    topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    jurisdictions: tuple[str, ...] = Field(min_length=1)
    consent: ConsentRequirements = ConsentRequirements()
    signup_status: SignupStatusRule | None = None
    identifiers: IdentifierStyle = IdentifierStyle()
    condition: str | None = Field(None, description="optional CEL expression; false blocks")
    events: dict[str, EventSpec] = Field(min_length=1)
    optout_notices: OptoutNotices = OptoutNotices()

    @field_validator("optout_notices", mode="before")
    @classmethod
    def _none_shorthand(cls, value: object) -> object:
        """`optout_notices: none` is `optout_notices: {kinds: none}`."""
        return {"kinds": "none"} if value == "none" else value

    @property
    def output_topic(self) -> str:
        """The topic forwarded records go to: `topic`, or `partner.<partner>.events`."""
        return self.topic or f"partner.{self.partner}.events"

    @property
    def optout_topic(self) -> str:
        """Where opt-out and deletion notices go: `optout_notices.topic`, or `partner.<partner>.optouts`."""
        return self.optout_notices.topic or f"partner.{self.partner}.optouts"


class LeakScanFile(_Strict):
    """Ruleset-wide leak-scan vocabulary (`rules/_leak-scan.yaml`)."""

    title_names: tuple[str, ...] = ()
    title_id_patterns: tuple[str, ...] = ()
    forbidden_key_tokens: tuple[str, ...] = ()
    max_words: int = Field(2, ge=1)
    max_tokens: int = Field(4, ge=1)
