"""Which reason codes a rule can produce, and why: rule tests must cover each of them.

A reason is demanded only when the rule can reach it; each comes with a short sentence
saying why, so a data engineer knows which case to write.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from streams.core.reasons import Reason
from streams.core.rules.ruleset import CompiledField, CompiledRule
from streams.core.schema import load_schema_json

ALWAYS_POSSIBLE: Mapping[Reason, str] = {
    Reason.MALFORMED: "any input can be undecodable or invalid",
    Reason.UNKNOWN_SIGNAL: "any input can carry a privacy signal the guard cannot read",
    Reason.EVENT_TYPE_NOT_ALLOWED: "any input can carry an event type the rule does not list",
    Reason.CONSENT_STALE: "the state tables can fall behind the events",
    Reason.KIDS_PROFILE: "every rule blocks kids profiles",
    Reason.MINOR: "every rule blocks minors",
    Reason.JURISDICTION_UNKNOWN: "an event may carry no country and match no stored jurisdiction",
    Reason.JURISDICTION_OUT_OF_SCOPE: "an event may come from outside the rule's jurisdictions",
    Reason.CONSENT_UNPARSEABLE: "an event may carry a consent string that does not parse",
    Reason.CONSENT_GPC: "every rule honours Global Privacy Control",
    Reason.CONSENT_DO_NOT_SELL: "every rule honours do-not-sell/share",
    Reason.CONSENT_US_PRIVACY_OPT_OUT: "every rule honours a US Privacy opt-out",
    Reason.CONSENT_GPP_OPT_OUT: "every rule honours a GPP opt-out",
    Reason.CONSENT_GPP_KNOWN_CHILD: "every rule honours a GPP known-child flag",
    Reason.CONSENT_GPP_SECTION_UNSUPPORTED: "an event may carry a GPP section the guard cannot read",
    Reason.CONSENT_INTEREST_BASED_ADS_DENIED: "every rule honours a stored interest-based-ads denial",
    Reason.CONSENT_AD_COOKIES_DECLINED: "every rule honours declined advertising cookies",
    Reason.LEAK_DETECTED: "the leak scan checks every record about to leave",
}

# Transforms that cannot fail on a value the event model has already validated.
_INFALLIBLE_TRANSFORMS = frozenset({"keep", "coarsen_time", "pseudonym"})
# Field-spec attributes that check a value (and so can strip it), whatever else is added later.
_CHECK_ATTRIBUTES = ("values", "pattern", "max_length")


@cache
def schema_required_paths() -> frozenset[str]:
    """Dotted paths the event schema requires (non-nullable all the way down)."""
    out: set[str] = set()

    def walk(fields: list[dict[str, Any]], prefix: str) -> None:
        for fld in fields:
            types = fld["type"] if isinstance(fld["type"], list) else [fld["type"]]
            if "null" in types:
                continue
            path = f"{prefix}{fld['name']}"
            out.add(path)
            for typ in types:
                if isinstance(typ, dict) and typ.get("type") == "record":
                    walk(typ["fields"], path + ".")

    walk(load_schema_json()["fields"], "")
    return frozenset(out)


def _why_field_can_be_missing(field: CompiledField) -> str | None:
    """Why a required output field can end up missing, or None when it cannot."""
    source = ".".join(field.path)
    if source not in schema_required_paths():
        return f"required field '{field.name}' comes from optional '{source}'"
    checks = [name for name in _CHECK_ATTRIBUTES if getattr(field.spec, name, None) is not None]
    if checks:
        return f"required field '{field.name}' can fail its {'/'.join(checks)} check"
    if field.spec.transform not in _INFALLIBLE_TRANSFORMS:
        return f"required field '{field.name}' can fail its {field.spec.transform} transform"
    return None


def reachable_reasons(rule: CompiledRule) -> dict[str, str]:
    """Reason codes the core can give for this rule, each with why (shell-only codes excluded).

    `rule_condition_error` is left out: a well-guarded condition cannot raise.
    """
    source = rule.source
    out: dict[str, str] = {str(r): why for r, why in ALWAYS_POSSIBLE.items()}
    need = source.consent
    needs = [
        name
        for name, required in (
            ("interest_based_ads", need.interest_based_ads == "required"),
            ("ad_cookies_on_web", need.ad_cookies_on_web == "required"),
            ("tcf", need.tcf is not None),
        )
        if required
    ]
    if needs:
        out[Reason.CONSENT_MISSING] = f"the rule requires consent ({', '.join(needs)})"
    if need.honour_dnt:
        out[Reason.CONSENT_DNT] = "the rule sets consent.honour_dnt"
    if need.tcf:
        out[Reason.CONSENT_TCF_DENIED] = "the rule requires a TCF legal basis"
    with_status = [t for t, e in rule.events.items() if e.signup_status]
    if source.signup_status is not None:
        with_status = list(rule.events)
    if with_status:
        out[Reason.SIGNUP_STATUS_NOT_ALLOWED] = f"sign-up status is checked for {', '.join(with_status)}"
        if source.signup_status is None or source.signup_status.when_missing == "block":
            out[Reason.SIGNUP_STATUS_MISSING] = "a missing sign-up status blocks (when_missing: block)"
    if source.condition:
        out[Reason.RULE_CONDITION_FALSE] = "the rule has a condition"
    for event_type, event in rule.events.items():
        for fld in event.fields:
            why = _why_field_can_be_missing(fld) if fld.spec.required else None
            if why and Reason.REQUIRED_FIELD_MISSING not in out:
                out[Reason.REQUIRED_FIELD_MISSING] = f"{event_type}: {why}"
    return {str(k): v for k, v in out.items()}


def possible_reasons(rule: CompiledRule) -> frozenset[str]:
    """The reason codes of `reachable_reasons`, without the explanations."""
    return frozenset(reachable_reasons(rule))
