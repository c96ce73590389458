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
