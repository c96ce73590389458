"""Stable reason codes. They are an API: auditors, dashboards and replay depend on them."""

from enum import StrEnum


class Reason(StrEnum):
    """Why a record was withheld from a partner."""

    MALFORMED = "malformed"
    SCHEMA_UNKNOWN = "schema_unknown"  # Avro: the writer schema id cannot be resolved
    SCHEMA_INCOMPATIBLE = "schema_incompatible"  # Avro: the writer schema cannot be read as ours
    UNKNOWN_SIGNAL = "unknown_signal"
    EVENT_TYPE_NOT_ALLOWED = "event_type_not_allowed"
    KIDS_PROFILE = "kids_profile"
    MINOR = "minor"
    JURISDICTION_UNKNOWN = "jurisdiction_unknown"
    JURISDICTION_OUT_OF_SCOPE = "jurisdiction_out_of_scope"
    CONSENT_STALE = "consent_stale"
    CONSENT_MISSING = "consent_missing"
    CONSENT_UNPARSEABLE = "consent_unparseable"
    CONSENT_GPC = "consent_gpc"
    CONSENT_DNT = "consent_dnt"
    CONSENT_DO_NOT_SELL = "consent_do_not_sell_or_share"
    CONSENT_INTEREST_BASED_ADS_DENIED = "consent_interest_based_ads_denied"
    CONSENT_AD_COOKIES_DECLINED = "consent_ad_cookies_declined"
    CONSENT_TCF_DENIED = "consent_tcf_denied"
    CONSENT_US_PRIVACY_OPT_OUT = "consent_us_privacy_opt_out"
    CONSENT_GPP_OPT_OUT = "consent_gpp_opt_out"
    CONSENT_GPP_KNOWN_CHILD = "consent_gpp_known_child"
    CONSENT_GPP_SECTION_UNSUPPORTED = "consent_gpp_section_unsupported"
    SIGNUP_STATUS_MISSING = "signup_status_missing"
    SIGNUP_STATUS_NOT_ALLOWED = "signup_status_not_allowed"
    RULE_CONDITION_FALSE = "rule_condition_false"
    RULE_CONDITION_ERROR = "rule_condition_error"
    REQUIRED_FIELD_MISSING = "required_field_missing"
    LEAK_DETECTED = "leak_detected"
    RECORD_TOO_LARGE = "record_too_large"
    INTERNAL_ERROR = "internal_error"


# One plain-language line per reason code: the one table the report, `docs/reason-codes.md`
# (generated: `python -m streams.offline.reasondoc --write`) and rule authors read.
EXPLANATIONS: dict[Reason, str] = {
    Reason.MALFORMED: "the input could not be decoded or validated (strict parsing); its raw bytes are kept",
    Reason.SCHEMA_UNKNOWN: "Avro input whose writer schema id could not be resolved (registry or pinned id)",
    Reason.SCHEMA_INCOMPATIBLE: "Avro input whose writer schema cannot be read as the guard's event schema",
    Reason.UNKNOWN_SIGNAL: "`user` or `context.consent` holds a key the guard does not know",
    Reason.EVENT_TYPE_NOT_ALLOWED: "the partner's rule does not list this event type (most traffic)",
    Reason.KIDS_PROFILE: "the event comes from a kids profile, which is never shared",
    Reason.MINOR: "the person is a minor (`user.age_band: minor`), never shared",
    Reason.JURISDICTION_UNKNOWN: "no country on the event and none on a stored consent record",
    Reason.JURISDICTION_OUT_OF_SCOPE: "a country the event or a stored record names is out of scope",
    Reason.CONSENT_STALE: "the consent or sign-up state lags the events by more than the bound (fail closed)",
    Reason.CONSENT_MISSING: "the rule needs consent and no stored record or string grants it (fail closed)",
    Reason.CONSENT_UNPARSEABLE: "a consent string (TCF, US Privacy, GPP) could not be decoded",
    Reason.CONSENT_GPC: "the browser sent Global Privacy Control",
    Reason.CONSENT_DNT: "the browser sent Do Not Track and the rule honours it",
    Reason.CONSENT_DO_NOT_SELL: "the person opted out of the sale or sharing of their data",
    Reason.CONSENT_INTEREST_BASED_ADS_DENIED: "a stored consent record denies interest-based ads",
    Reason.CONSENT_AD_COOKIES_DECLINED: "advertising cookies were declined (event or stored record)",
    Reason.CONSENT_TCF_DENIED: "the TCF string gives the partner no legal basis for the purposes it needs",
    Reason.CONSENT_US_PRIVACY_OPT_OUT: "the US Privacy string says the person opted out of sale",
    Reason.CONSENT_GPP_OPT_OUT: "the GPP string (US National) says the person opted out",
    Reason.CONSENT_GPP_KNOWN_CHILD: "the GPP string flags a known child",
    Reason.CONSENT_GPP_SECTION_UNSUPPORTED: "the GPP string holds a section the guard cannot read",
    Reason.SIGNUP_STATUS_MISSING: "the rule checks sign-up status and the account has none",
    Reason.SIGNUP_STATUS_NOT_ALLOWED: "the account's sign-up status is not one the rule allows here",
    Reason.RULE_CONDITION_FALSE: "the rule's CEL condition is false for this event",
    Reason.RULE_CONDITION_ERROR: "the rule's CEL condition could not be evaluated (fail closed)",
    Reason.REQUIRED_FIELD_MISSING: "a field the rule requires is absent, failed its check or its transform",
    Reason.LEAK_DETECTED: "the leak scan found something in the projected record the partner must not see",
    Reason.RECORD_TOO_LARGE: "the output would exceed `max_record_bytes`; the blocked copy is reduced",
    Reason.INTERNAL_ERROR: "a defect: deciding or building the outputs raised (details name the type)",
}


def explain(reason: str) -> str:
    """The one-line explanation of a reason code ("" for a code the guard never writes)."""
    try:
        return EXPLANATIONS[Reason(reason)]
    except ValueError:
        return ""
