"""`partner-guard rules test --scaffold PARTNER`: a rule-test file with one case per reachable reason.

The reasons are the ones `rules test` demands (`streams.core.coverage.reachable_reasons`, the
same analysis). For each, the scaffold tries small changes to one realistic input that the
rule forwards (the `defaults`) and keeps the first whose decision blocks for exactly that
reason (else for that reason among others): the minimal event that triggers it, found by
running the real core, not by guessing. Expectations are written as the core decides today,
each marked for the author to confirm; a reason no candidate reaches is listed, never faked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.coverage import reachable_reasons
from streams.core.models import Decision
from streams.core.rules.ruleset import CompiledField, CompiledRule, Ruleset
from streams.offline.cases import decide_case
from streams.offline.ruletests import deep_merge, test_key

ACCOUNT, PROFILE, DEVICE = "acct-scaffold-1", "prof-scaffold-1", "dev-scaffold-1"
STATUSES = ("prospect", "in_signup", "member", "former_member")
# Text values tried, in order, for a kept field with a pattern (the first that passes is used).
KEPT_TEXT = ("US", "fall-launch-2026", "winter", "spring-sale", "a", "abc", "abc-1", "1", "x1")
# GPP and TCF strings from the standards' reference vectors (the shipped rule tests use them).
GPP_OPT_OUT = "DBABL~CVVVAAAAAACA"
GPP_KNOWN_CHILD = ("DBABL~CVVqAAAAAECA", "DBABLA~CAAAVVVVVVRA.QA")
GPP_UNSUPPORTED = "DBABBg~BAAAAAAA"
TCF_NO_VENDOR = "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
TCF_PURPOSE_7_REFUSED = "CP1R2oAP1R2oAAHABBENDIEgAIAAAAAAACiQF5wAQF5gABAAAA"
TCF_TRUNCATED = "CLcVDxRMWfGmWAVAHCEN"
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "BR", "JP", "AU", "IN", "MX")


@dataclass
class Scaffold:
    """A generated test file and what it could not cover."""

    partner: str
    text: str
    cases: int
    base_forwards: bool
    not_found: dict[str, str] = field(default_factory=dict)  # reason -> why it is reachable


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, path, value)
    return out


def _kept_value(fld: CompiledField) -> str | None:
    if fld.values:
        return sorted(fld.values)[0]
    return next((v for v in KEPT_TEXT if fld.refuse_kept(v) is None), None)


def _country(rule: CompiledRule) -> str:
    scope = set(rule.source.jurisdictions)
    for country in ("US", "CA", "GB", *COUNTRIES):
        if country in scope:
            return country
    return "DE" if "EEA" in scope else next(iter(sorted(scope)))


def _allowed_status(rule: CompiledRule, event_type: str) -> str | None:
    event = rule.events[event_type]
    allowed = event.signup_status or (
        rule.source.signup_status.allowed if rule.source.signup_status else None
    )
    return next((s for s in STATUSES if s in allowed), None) if allowed else None


def base_inputs(rule: CompiledRule, event_type: str) -> dict[str, Any]:
    """One realistic input of `event_type`: every field of the rule filled with a value it keeps."""
    country = _country(rule)
    event: dict[str, Any] = {
        "event_id": "ev-scaffold-1",
        "event_type": event_type,
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "profile_id": PROFILE,
        "device": {"device_id": DEVICE, "platform": "ios", "limit_ad_tracking": False},
        "context": {"country": country, "ip": "203.0.113.195"},
        "user": {"email": "person@example.com", "kids_profile": False, "age_band": "adult"},
        "properties": {},
    }
    event["device"]["ad_id"] = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    for fld in rule.events[event_type].fields:
        if fld.spec.transform == "keep" and fld.path[0] not in ("event_type", "event_time"):
            value = _kept_value(fld)
            if value is not None:
                _set(event, fld.path, value)
        elif fld.spec.transform == "sha256_phone":
            _set(event, fld.path, "+1 650 555 0100")
    consent = {
        "subject": f"account:{ACCOUNT}",
        "interest_based_ads": "granted",
        "ad_cookies": "granted",
        "do_not_sell_or_share": False,
        "matched_identifier_opt_out": False,
        "jurisdiction": "US-CA" if country == "US" else country,
    }
    inputs: dict[str, Any] = {"event": event, "consent": [consent]}
    status = _allowed_status(rule, event_type)
    if status is not None:
        inputs["signup_status"] = {"account_id": ACCOUNT, "status": status}
    return inputs


def _candidates(reason: str, rule: CompiledRule, defaults: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Changes to the defaults that may block for `reason`, smallest first."""
    consent_record = defaults["consent"][0]
    event = defaults["event"]
    event_type = event["event_type"]
    scope = set(rule.source.jurisdictions)
    if reason == "malformed":
        yield {"event": "{not json"}
    elif reason == "unknown_signal":
        yield {"event": {"user": {"age": 12}}}
    elif reason == "event_type_not_allowed":
        yield {"event": {"event_type": "title_selected"}}
    elif reason == "consent_stale":
        yield {"stale": True}
    elif reason == "kids_profile":
        yield {"event": {"user": {"kids_profile": True}}}
    elif reason == "minor":
        yield {"event": {"user": {"age_band": "minor"}}}
    elif reason == "jurisdiction_unknown":
        plain = {k: v for k, v in consent_record.items() if k != "jurisdiction"}
        yield {"event": {"context": {"country": None}}, "consent": [plain]}
    elif reason == "jurisdiction_out_of_scope":
        for country in COUNTRIES:
            if country not in scope and not ("EEA" in scope and country in ("DE", "FR")):
                yield {"event": {"context": {"country": country}}}
    elif reason == "consent_unparseable":
        yield {"event": {"context": {"consent": {"us_privacy": "1Y"}}}}
        yield {"event": {"context": {"consent": {"gpp": "not-a-gpp-string"}}}}
        yield {"event": {"context": {"country": "DE", "consent": {"tcf": TCF_TRUNCATED}}}}
    elif reason == "consent_gpc":
        yield {"event": {"context": {"consent": {"gpc": True}}}}
    elif reason == "consent_dnt":
        yield {"event": {"context": {"consent": {"dnt": True}}}}
    elif reason == "consent_do_not_sell_or_share":
        yield {"consent": [{**consent_record, "do_not_sell_or_share": True}]}
    elif reason == "consent_us_privacy_opt_out":
        yield {"event": {"context": {"consent": {"us_privacy": "1YYN"}}}}
    elif reason == "consent_gpp_opt_out":
        yield {"event": {"context": {"consent": {"gpp": GPP_OPT_OUT}}}}
    elif reason == "consent_gpp_known_child":
        yield from ({"event": {"context": {"consent": {"gpp": gpp}}}} for gpp in GPP_KNOWN_CHILD)
    elif reason == "consent_gpp_section_unsupported":
        yield {"event": {"context": {"consent": {"gpp": GPP_UNSUPPORTED}}}}
    elif reason == "consent_interest_based_ads_denied":
        yield {"consent": [{**consent_record, "interest_based_ads": "denied"}]}
    elif reason == "consent_ad_cookies_declined":
        yield {"event": {"context": {"consent": {"ad_cookies": "denied"}}}}
        yield {"consent": [{**consent_record, "ad_cookies": "denied"}]}
    elif reason == "consent_missing":
        yield {"consent": None}
        yield {"event": {"context": {"country": "FR"}}}
    elif reason == "consent_tcf_denied":
        for tcf in (TCF_PURPOSE_7_REFUSED, TCF_NO_VENDOR):
            yield {"event": {"context": {"country": "DE", "consent": {"tcf": tcf}}}}
    elif reason == "signup_status_missing":
        yield {"signup_status": None}
    elif reason == "signup_status_not_allowed":
        for status in STATUSES:
            yield {"signup_status": {"account_id": ACCOUNT, "status": status}}
    elif reason == "rule_condition_false":
        for platform in ("tv", "web", "android", "ios", "other"):
            yield {"event": {"device": {"platform": platform}}}
        for country in COUNTRIES:
            yield {"event": {"context": {"country": country}}}
    elif reason == "required_field_missing":
        for fld in rule.events[event_type].fields:
            if fld.spec.required and fld.path[0] not in ("event_id", "event_type", "event_time"):
                yield {"event": _nest(fld.path, None)}
                yield {"event": _nest(fld.path, "zz-not-allowed-!")}
    elif reason == "leak_detected":
        for fld in rule.events[event_type].fields:
            if fld.spec.transform != "keep":
                continue
            value = _kept_value(fld)
            if value is None:
                continue
            # the value a partner would receive, also the person's own id: a raw-value leak
            yield {"event": {"profile_id": value}}
            yield {"event": {"device": {"device_id": value}}}
            for text in ("title-801001", "strangerthings4", "stranger-things"):
                if fld.refuse_kept(text) is None:
                    yield {"event": _nest(fld.path, text)}


def _decide(inputs: dict[str, Any], ruleset: Ruleset, partner: str) -> Decision:
    index = ruleset.partners.index(partner)
    return decide_case(inputs, orjson.dumps(inputs), ruleset)[index]


def _inputs_of(defaults: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    merged = deep_merge(defaults, {k: v for k, v in change.items() if k != "event" or isinstance(v, dict)})
    if isinstance(change.get("event"), str):
        merged["event"] = change["event"]
    if "consent" in change and change["consent"] is not None:
        merged["consent"] = change["consent"]  # a list replaces, never merges
    return dict(merged)


def find_case(
    reason: str, rule: CompiledRule, defaults: dict[str, Any], ruleset: Ruleset
) -> tuple[dict[str, Any], Decision] | None:
    """The first candidate change that blocks for exactly `reason`, else for it among others."""
    fallback = None
    for change in _candidates(reason, rule, defaults):
        decision = _decide(_inputs_of(defaults, change), ruleset, rule.partner)
        if list(decision.reasons) == [reason]:
            return change, decision
        if fallback is None and reason in decision.reasons:
            fallback = (change, decision)
    return fallback


def _flow(value: Any) -> str:
    """A value as one-line YAML (JSON is YAML's flow style)."""
    return orjson.dumps(value).decode()


def _block(doc: dict[str, Any], indent: str) -> list[str]:
    """A mapping as block YAML two levels deep (deeper values in flow style), for reading."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  {k}: {_flow(v)}" for k, v in value.items()]
        else:
            lines.append(f"{indent}{key}: {_flow(value)}")
    return lines


def _case(name: str, change: dict[str, Any], decision: Decision, comment: str) -> list[str]:
    lines = [f"  - name: {_flow(name)}   # {comment}"]
    lines += [f"    {key}: {_flow(value)}" for key, value in change.items()]
    expect: dict[str, Any] = {"verdict": decision.verdict, "reasons": list(decision.reasons)}
    if decision.forwarded:
        expect["record_keys"] = sorted(decision.record or {})
    lines.append(f"    expect: {_flow(expect)}   # check: is this what the rule should do?")
    return lines


def scaffold(ruleset: Ruleset, partner: str) -> Scaffold:
    """The scaffolded test file for one partner of `ruleset` (KeyError: no such partner)."""
    rule = ruleset.rule(partner)
    keyed = ruleset.with_keys({p: test_key(p) for p in ruleset.partners})
    defaults: dict[str, Any] = {}
    base: Decision | None = None
    for event_type in rule.events:  # the first event type the rule forwards from a plain input
        defaults = base_inputs(rule, event_type)
        base = _decide(defaults, keyed, partner)
        if base.forwarded:
            break
    assert base is not None
    lines = [
        f"# Scaffolded by `partner-guard rules test --scaffold {partner}`: one case per reason code the",
        "# rule can give, each a small change to `defaults`, found by running the core. Every `expect`",
        "# is what the core decides today: check each against what the rule should do, then edit.",
        f"partner: {partner}",
        "defaults:",
        *_block(defaults, "  "),
        "cases:",
    ]
    lines += _case(
        "the defaults" + (" are forwarded" if base.forwarded else " (NOT forwarded: fix the defaults first)"),
        {},
        base,
        "the realistic input every other case changes",
    )
    cases = 1
    not_found: dict[str, str] = {}
    for reason, why in reachable_reasons(rule).items():
        found = find_case(reason, rule, defaults, keyed)
        if found is None:
            not_found[reason] = why
            lines.append(f"  # TODO {reason}: no small change found; reachable because {why}")
            continue
        change, decision = found
        lines += _case(f"{reason}", change, decision, f"reachable because {why}")
        cases += 1
    return Scaffold(partner, "\n".join(lines) + "\n", cases, base.forwarded, not_found)
