"""`decide(record, snapshot, ruleset) -> decisions`: the pure heart of partner-guard."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from streams.core.consent import EEA_REGIONS, EffectiveConsent, effective_consent
from streams.core.leakscan import RawValues, raw_values_of
from streams.core.models import APP_PLATFORMS, Decision, Envelope, Event, Malformed, StateSnapshot
from streams.core.reasons import Reason
from streams.core.rules.condition import ConditionError
from streams.core.rules.ruleset import CompiledRule, Ruleset
from streams.core.schema import FORBIDDEN_TAGS
from streams.core.transforms import project

_NOT_ALLOWED = (Reason.EVENT_TYPE_NOT_ALLOWED.value,)  # the decision of most traffic, built once
# A reason a rule blocks, with the detail that explains it (when there is one).
Blocking = tuple[Reason, str | None]


def _block(
    rule: CompiledRule,
    ruleset: Ruleset,
    event_id: str | None,
    reasons: list[str],
    details: list[str] | tuple[str, ...] = (),
) -> Decision:
    return Decision(
        partner=rule.partner,
        rule_id=rule.rule_id,
        ruleset_digest=ruleset.digest,
        event_id=event_id,
        verdict="block",
        reasons=tuple(dict.fromkeys(str(r) for r in reasons)),
        details=tuple(details),
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)


def sensitive_values(event: Event, tags: Mapping[str, str]) -> frozenset[str]:
    """The event's own raw identifiers and content values, which must never appear in output."""
    device, context, user = event.device, event.context, event.user
    values: list[str | None] = [event.event_id, event.account_id, event.profile_id]
    if device:
        values.append(device.device_id)
    if context:
        values += [context.ip, context.page_url, context.referrer_url, context.user_agent]
    if user:
        values += [user.email, user.phone]
    for name, value in event.properties.items():  # tagged by the ruleset's schema (replay: a past one)
        if tags.get(f"properties.{name}") in FORBIDDEN_TAGS:
            values.extend(_strings(value))
    return raw_values_of(values)


def _in_scope(jurisdiction: str, scope: tuple[str, ...]) -> bool:
    return jurisdiction in scope or ("EEA" in scope and jurisdiction in EEA_REGIONS)


def _consent_reasons(rule: CompiledRule, event: Event, consent: EffectiveConsent) -> list[Blocking]:
    """Opt-outs every rule honours (P3), then the consent this rule requires; in order."""
    need = rule.source.consent
    found: list[Blocking] = []
    if consent.unparseable:
        found.append((Reason.CONSENT_UNPARSEABLE, "consent_unparseable: " + ",".join(consent.unparseable)))
    if consent.gpc:
        found.append((Reason.CONSENT_GPC, None))
    if consent.do_not_sell_or_share:
        found.append((Reason.CONSENT_DO_NOT_SELL, None))
    if consent.us_privacy_opt_out:
        found.append((Reason.CONSENT_US_PRIVACY_OPT_OUT, None))
    if consent.gpp_opt_out:
        found.append((Reason.CONSENT_GPP_OPT_OUT, None))
    if consent.gpp_known_child:
        found.append((Reason.CONSENT_GPP_KNOWN_CHILD, None))
    if consent.gpp_unsupported_sections:
        sections = ",".join(map(str, consent.gpp_unsupported_sections))
        found.append((Reason.CONSENT_GPP_SECTION_UNSUPPORTED, f"gpp sections {sections}"))
    if need.honour_dnt and consent.dnt:
        found.append((Reason.CONSENT_DNT, None))
    if consent.interest_based_ads == "denied":
        found.append((Reason.CONSENT_INTEREST_BASED_ADS_DENIED, None))
    elif consent.interest_based_ads is None and need.interest_based_ads == "required":
        found.append((Reason.CONSENT_MISSING, "consent_missing: interest_based_ads"))
    signals = event.context.consent if event.context else None
    # strictest reading: a platform missing or unknown may be a browser (`APP_PLATFORMS`)
    web = not (event.device and event.device.platform in APP_PLATFORMS)
    if consent.ad_cookies == "denied" and (web or (signals and signals.ad_cookies == "denied")):
        found.append((Reason.CONSENT_AD_COOKIES_DECLINED, None))
    elif web and consent.ad_cookies is None and need.ad_cookies_on_web == "required":
        found.append((Reason.CONSENT_MISSING, "consent_missing: ad_cookies"))
    if need.tcf is not None and consent.gdpr_applies and not consent.tcf_unparseable:
        if not consent.tcf:
            found.append((Reason.CONSENT_MISSING, "consent_missing: tcf"))
        else:  # every TC string the event carries must grant: any one that denies blocks
            vendor = need.tcf.vendor_id
            denied = [p for p in need.tcf.purposes if not all(tc.allows(vendor, p) for tc in consent.tcf)]
            if denied:
                found.append((Reason.CONSENT_TCF_DENIED, f"tcf purposes without legal basis: {denied}"))
    return found


def _condition_holds(
    rule: CompiledRule, event: Event, consent: EffectiveConsent, snapshot: StateSnapshot
) -> Reason | None:
    """The condition must hold for every jurisdiction the event falls under (any "no" blocks)."""
    if rule.condition is None:
        return None
    status = snapshot.signup_status.status if snapshot.signup_status else ""
    for jurisdiction in consent.jurisdictions or ("",):
        consent_view = {
            "jurisdiction": jurisdiction,
            "gdpr_applies": consent.gdpr_applies,
            "limit_ad_tracking": consent.limit_ad_tracking,
        }
        try:
            holds = rule.condition.holds(event, consent_view, status)
        except ConditionError:
            return Reason.RULE_CONDITION_ERROR
        if not holds:
            return Reason.RULE_CONDITION_FALSE
    return None


def decide_for_rule(
    event: Event,
    snapshot: StateSnapshot,
    rule: CompiledRule,
    ruleset: Ruleset,
    consent: EffectiveConsent,
    raw_values: Callable[[], RawValues],
) -> Decision:
    """The decision of one partner for one valid event whose type this rule allows."""
    event_spec = rule.events[event.event_type]
    reasons: list[str] = []
    details: list[str] = []
    if snapshot.stale:
        reasons.append(Reason.CONSENT_STALE)
    user = event.user
    if user and user.kids_profile:
        reasons.append(Reason.KIDS_PROFILE)
    if user and user.age_band == "minor":
        reasons.append(Reason.MINOR)
    if event.unknown_signals:
        reasons.append(Reason.UNKNOWN_SIGNAL)
        details.append("unknown_signal: " + ", ".join(event.unknown_signals))
    if not consent.jurisdictions:
        reasons.append(Reason.JURISDICTION_UNKNOWN)
    elif not all(_in_scope(j, rule.source.jurisdictions) for j in consent.jurisdictions):
        reasons.append(Reason.JURISDICTION_OUT_OF_SCOPE)
    for reason, detail in _consent_reasons(rule, event, consent):
        reasons.append(reason)
        if detail is not None:
            details.append(detail)
    allowed_status = event_spec.signup_status or (
        frozenset(rule.source.signup_status.allowed) if rule.source.signup_status else None
    )
    if allowed_status is not None:
        status = snapshot.signup_status
        if status is None or status.account_id != event.account_id:
            if rule.source.signup_status is None or rule.source.signup_status.when_missing == "block":
                reasons.append(Reason.SIGNUP_STATUS_MISSING)
        elif status.status not in allowed_status:
            reasons.append(Reason.SIGNUP_STATUS_NOT_ALLOWED)
    if not reasons:
        condition = _condition_holds(rule, event, consent, snapshot)
        if condition is not None:
            reasons.append(condition)
    if reasons:
        return _block(rule, ruleset, event.event_id, reasons, details)

    projection = project(
        event, event_spec.fields, consent, rule.source.identifiers, ruleset.keys.get(rule.partner)
    )
    if projection.missing_required:
        return _block(
            rule,
            ruleset,
            event.event_id,
            [Reason.REQUIRED_FIELD_MISSING],
            [f"required: {', '.join(projection.missing_required)}", *projection.stripped],
        )
    findings = projection.leaks + ruleset.leak_scanner.scan(
        projection.record, raw_values(), projection.derived
    )
    if findings:
        return _block(rule, ruleset, event.event_id, [Reason.LEAK_DETECTED], findings)
    return Decision(
        partner=rule.partner,
        rule_id=rule.rule_id,
        ruleset_digest=ruleset.digest,
        event_id=event.event_id,
        verdict="forward",
        record=projection.record,
        stripped=tuple(projection.stripped),
    )


class _Lazy:
    """A value computed on first use (the leak scan's raw values, only for forwards)."""

    __slots__ = ("_compute", "_value")

    def __init__(self, compute: Callable[[], RawValues]) -> None:
        self._compute = compute
        self._value: RawValues | None = None

    def __call__(self) -> RawValues:
        if self._value is None:
            self._value = self._compute()
        return self._value


def receivable_types(ruleset: Ruleset) -> frozenset[str]:
    """Every event type some rule of the ruleset can receive (the envelope gate's pass list)."""
    return frozenset(event_type for rule in ruleset.rules for event_type in rule.events)


def consults_state(record: Event | Envelope | Malformed, ruleset: Ruleset) -> bool:
    """True when some rule gets past the event-type check, so the decision reads state.

    The shell skips building a state snapshot otherwise (most traffic is content).
    """
    return isinstance(record, Event) and any(record.event_type in rule.events for rule in ruleset.rules)


def decide(record: Event | Envelope | Malformed, snapshot: StateSnapshot, ruleset: Ruleset) -> list[Decision]:
    """One decision per partner, in rule order. Never raises: any failure is a block.

    An `Envelope` (an event read only as far as its type) is blocked for every partner: as
    `event_type_not_allowed`, or as `internal_error` by a rule that allows its type (the
    shell should have decoded it in full; fail closed).
    """
    if isinstance(record, Malformed):
        return [_block(rule, ruleset, None, [record.reason], [record.error]) for rule in ruleset.rules]
    if isinstance(record, Envelope):
        return [
            Decision(rule.partner, rule.rule_id, ruleset.digest, record.event_id, "block", _NOT_ALLOWED)
            if record.event_type not in rule.events
            else _block(rule, ruleset, record.event_id, [Reason.INTERNAL_ERROR], ["not decoded in full"])
            for rule in ruleset.rules
        ]
    try:
        decisions: list[Decision] = []
        consent: EffectiveConsent | None = None
        raw_values = _Lazy(
            lambda: ruleset.leak_scanner.raw_values(record, sensitive_values(record, ruleset.tags))
        )
        for rule in ruleset.rules:
            if record.event_type not in rule.events:  # most traffic: content the partners never see
                decisions.append(_block(rule, ruleset, record.event_id, [Reason.EVENT_TYPE_NOT_ALLOWED]))
                continue
            consent = consent or effective_consent(record, snapshot)
            decisions.append(decide_for_rule(record, snapshot, rule, ruleset, consent, raw_values))
        return decisions
    except Exception as exc:  # defense in depth: a bug must block, never forward or crash
        return [
            _block(rule, ruleset, record.event_id, [Reason.INTERNAL_ERROR], [type(exc).__name__])
            for rule in ruleset.rules
        ]
