"""Which reason codes a rule can produce: rule tests must cover each of them."""

from __future__ import annotations

from streams.core.reasons import Reason
from streams.core.rules.ruleset import CompiledRule

ALWAYS_POSSIBLE = frozenset(
    {
        Reason.MALFORMED,
        Reason.UNKNOWN_SIGNAL,
        Reason.EVENT_TYPE_NOT_ALLOWED,
        Reason.CONSENT_STALE,
        Reason.KIDS_PROFILE,
        Reason.MINOR,
        Reason.JURISDICTION_UNKNOWN,
        Reason.JURISDICTION_OUT_OF_SCOPE,
        Reason.CONSENT_UNPARSEABLE,
        Reason.CONSENT_GPC,
        Reason.CONSENT_DO_NOT_SELL,
        Reason.CONSENT_US_PRIVACY_OPT_OUT,
        Reason.CONSENT_GPP_OPT_OUT,
        Reason.CONSENT_GPP_KNOWN_CHILD,
        Reason.CONSENT_GPP_SECTION_UNSUPPORTED,
        Reason.CONSENT_INTEREST_BASED_ADS_DENIED,
        Reason.CONSENT_AD_COOKIES_DECLINED,
        Reason.LEAK_DETECTED,
    }
)


def possible_reasons(rule: CompiledRule) -> frozenset[str]:
    """Reason codes the core can give for this rule (shell-only codes excluded).

    `rule_condition_error` is left out: a well-guarded condition cannot raise.
    """
    source = rule.source
    out = set(ALWAYS_POSSIBLE)
    need = source.consent
    if need.interest_based_ads == "required" or need.ad_cookies_on_web == "required" or need.tcf:
        out.add(Reason.CONSENT_MISSING)
    if need.honour_dnt:
        out.add(Reason.CONSENT_DNT)
    if need.tcf:
        out.add(Reason.CONSENT_TCF_DENIED)
    with_status = [e for e in rule.events.values() if e.signup_status] or (
        list(rule.events.values()) if source.signup_status else []
    )
    if with_status:
        out.add(Reason.SIGNUP_STATUS_NOT_ALLOWED)
        if source.signup_status is None or source.signup_status.when_missing == "block":
            out.add(Reason.SIGNUP_STATUS_MISSING)
    if source.condition:
        out.add(Reason.RULE_CONDITION_FALSE)
    if any(f.spec.required for e in rule.events.values() for f in e.fields):
        out.add(Reason.REQUIRED_FIELD_MISSING)
    return frozenset(str(r) for r in out)
