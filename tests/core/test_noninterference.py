"""P11 non-interference, as properties over the shipped rules and over generated rules.

For any valid event, replacing or removing every field tagged content, url, search or
pii:* — keeping the event valid and the consent state fixed — leaves every partner's
verdict, reasons and record unchanged, with exactly two stated exceptions (see
`streams.offline.noninterference`):

- output fields projected from a pii:* field carry its allowed transform of the new value,
  so they are compared out (and a `required_field_missing` naming only them is allowed);
- EXCEPTION, stated: the leak scan blocks (`leak_detected`, every finding `raw_value`) when
  an allowed field's value carries one of the event's own protected values — e.g. a
  campaign id equal to the page URL. The strategies below plant such collisions on
  purpose, and the test checks that this is the only way a verdict changes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.model import ALLOWED_EVENT_TYPES
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import RECORD_TAG, privacy_tags
from streams.offline.cases import decide_case
from streams.offline.noninterference import (
    CONSENT_NEUTRAL,
    LEAK_EXCEPTION,
    SAMPLE_TEXT,
    check_case,
    is_protected,
    protected_fields,
    with_values,
)
from streams.offline.ruletests import run_file
from tests.conftest import RULES_DIR

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GENERATED_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
CAMPAIGNS = ["fall-launch-2026", "spring", "stranger", "80100172", "us"]
ACCOUNT = "acct-000123"


def _text(kind: str) -> st.SearchStrategy[Any]:
    if kind == "string":
        return st.one_of(st.sampled_from(SAMPLE_TEXT + tuple(CAMPAIGNS)), st.text(max_size=40))
    if kind == "array":
        return st.lists(st.sampled_from(SAMPLE_TEXT), max_size=3)
    return st.integers(0, 2**40)


protected_values = st.fixed_dictionaries(
    {path: st.one_of(st.none(), _text(kind)) for path, kind in protected_fields().items()}
    | {path: st.sampled_from([None, neutral]) for path, neutral in CONSENT_NEUTRAL.items()}
)


@st.composite
def valid_case(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event of an allowed type (mostly), with protected fields drawn too; consent fixed."""
    event_type = draw(st.sampled_from([*sorted(ALLOWED_EVENT_TYPES), "title_selected"]))
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": event_type,
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "device": {"device_id": "dev-1", "platform": draw(st.sampled_from(["ios", "android", "web", "tv"]))},
        "context": {"country": draw(st.sampled_from(["US", "CA", "GB"])), "region": "CA", "consent": {}},
        "user": {"kids_profile": False, "age_band": "adult"},
        "properties": {
            "campaign_id": draw(st.sampled_from(CAMPAIGNS)),
            "install_source": "app_store",
            "step": "payment",
            "plan": "premium",
        },
    }
    if draw(st.booleans()):
        event["device"]["ad_id"] = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    return {
        "event": with_values(event, draw(protected_values)),
        "consent": [
            {
                "subject": f"account:{ACCOUNT}",
                "interest_based_ads": "granted",
                "ad_cookies": "granted",
                "do_not_sell_or_share": False,
                "matched_identifier_opt_out": False,
                "jurisdiction": "US-CA",
            }
        ],
        "signup_status": {"account_id": ACCOUNT, "status": "prospect"},
    }


def _leak_blocked(case: dict[str, Any], ruleset: Ruleset) -> int:
    return sum(d.reasons == (LEAK_EXCEPTION,) for d in decide_case(case, orjson.dumps(case), ruleset))


def test_p11_shipped_rules_decisions_ignore_protected_fields(ruleset: Ruleset) -> None:
    outcomes: Counter[str] = Counter()

    @SETTINGS
    @given(valid_case(), protected_values)
    def check(case: dict[str, Any], values: dict[str, Any]) -> None:
        assert check_case(ruleset, case, values) == []
        for decision in decide_case(case, orjson.dumps(case), ruleset):
            outcomes[decision.verdict] += 1
        outcomes["leak_exception"] += _leak_blocked(case, ruleset)

    check()
    assert outcomes["forward"] > 0 and outcomes["block"] > 0, outcomes  # not vacuous


def test_p11_leak_scan_exception_is_real(ruleset: Ruleset) -> None:
    """The stated exception happens: a page URL equal to the campaign id blocks the record."""
    base: dict[str, Any] = {
        "event": {
            "event_id": "ev-1",
            "event_type": "app_install",
            "event_time": "2026-11-28T10:42:17Z",
            "account_id": ACCOUNT,
            "device": {"platform": "ios"},
            "context": {"country": "US"},
            "properties": {"campaign_id": "spring-promo"},
        },
        "consent": [{"subject": f"account:{ACCOUNT}", "interest_based_ads": "granted", "jurisdiction": "US"}],
    }
    collide = with_values(base["event"], {"context.page_url": "spring-promo"})
    before = decide_case(base, b"", ruleset)[0]
    after = decide_case(dict(base, event=collide), b"", ruleset)[0]
    assert before.forwarded and after.reasons == (LEAK_EXCEPTION,)
    assert check_case(ruleset, base, {"context.page_url": "spring-promo"}) == []  # stated, so allowed


# --- generated rules --------------------------------------------------------------------

TAGS = privacy_tags().tags
READ_PATHS = [*sorted(TAGS), "properties.favourite_show", "device.colour"]
KEEP_FIELDS = {
    "platform": "{from: device.platform, values: [ios, android, web]}",
    "country": "{from: context.country, pattern: '[A-Z]{2}'}",
    "campaign_id": "{from: properties.campaign_id, pattern: '[a-z0-9-]{1,40}'}",
    "step": "{from: properties.step, values: [payment, registration]}",
    "region": "{from: context.region, max_length: 8}",
    "em": "{from: user.email, transform: sha256_email}",
    "ph": "{from: user.phone, transform: sha256_phone}",
    "client_ip": "{from: context.ip, transform: truncate_ip}",
    "ad_id": "{from: device.ad_id, transform: ad_id}",
    "external_id": "{from: account_id, transform: pseudonym}",
    "event_hour": "{from: event_time, transform: coarsen_time}",
}


def _unreadable(path: str, value_read: bool) -> bool:
    """What the loader must refuse: protected, consent or undeclared fields (whole records too)."""
    tag = TAGS.get(path)
    if tag is None or is_protected(tag) or tag == "consent":
        return True
    if tag == RECORD_TAG and value_read:
        return any(p.startswith(path + ".") and (is_protected(t) or t == "consent") for p, t in TAGS.items())
    if tag == RECORD_TAG:  # presence: a record is there when any of its protected members is
        return any(p.startswith(path + ".") and is_protected(t) for p, t in TAGS.items())
    return False


@st.composite
def clause(draw: st.DrawFn) -> tuple[str, bool]:
    """One condition clause over a random path: (CEL text, whether the loader must refuse it)."""
    path = draw(st.sampled_from(READ_PATHS))
    word = draw(st.sampled_from(["ios", "US", "stranger", "spring", ""]))
    parts = path.split(".")
    indexed = "event" + "".join(f'["{p}"]' for p in parts)
    templates = [
        (f"has(event.{path})", False),
        (f'event.{path} == "{word}"', True),
        (f'string(event.{path}).contains("{word}")', True),
        (f'["{word}", "x"].exists(w, w == {indexed})', True),
    ]
    text, value_read = draw(st.sampled_from(templates))
    if draw(st.booleans()):
        text = f"!({text})"
    return text, _unreadable(path, value_read)


@st.composite
def generated_rule(draw: st.DrawFn) -> tuple[str, bool]:
    """A rule text with random fields and a random condition; whether it must be refused."""
    types = draw(st.lists(st.sampled_from(sorted(ALLOWED_EVENT_TYPES)), min_size=1, max_size=3, unique=True))
    clauses = draw(st.lists(clause(), min_size=1, max_size=3))
    joiner = draw(st.sampled_from([" && ", " || "]))
    condition = joiner.join(c for c, _ in clauses)
    lines = [
        "partner: gen",
        "jurisdictions: [US, CA]",
        "consent: {interest_based_ads: required, ad_cookies_on_web: not_required}",
        f"condition: {orjson.dumps(condition).decode()}",
        "events:",
    ]
    for event_type in types:
        names = draw(st.lists(st.sampled_from(sorted(KEEP_FIELDS)), min_size=1, max_size=6, unique=True))
        if "ad_id" in names:  # P10: an ad id never travels with anything account- or person-derived
            names = [n for n in names if n not in ("em", "ph", "external_id")]
        lines += [f"  {event_type}:", "    fields:", "      event_id: {from: event_id, transform: pseudonym}"]
        lines += [f"      {name}: {KEEP_FIELDS[name]}" for name in names]
    return "\n".join(lines) + "\n", any(refuse for _, refuse in clauses)


def _load(text: str) -> Ruleset | list[str]:
    with tempfile.TemporaryDirectory() as directory:
        shutil.copy(RULES_DIR / "_leak-scan.yaml", Path(directory) / "_leak-scan.yaml")
        (Path(directory) / "gen.yaml").write_text(text)
        try:
            return load_ruleset(directory).with_keys({"gen": b"g" * 32})
        except RulesetError as exc:
            return [str(p) for p in exc.problems]


def test_p11_generated_rules_are_refused_or_non_interfering() -> None:
    """Every generated rule is either refused (exactly when its condition reads what it may
    not, at the condition's line) or its decisions ignore every protected field."""
    seen: Counter[str] = Counter()

    @GENERATED_SETTINGS
    @given(generated_rule(), st.lists(st.tuples(valid_case(), protected_values), min_size=1, max_size=3))
    def check(rule: tuple[str, bool], cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        text, must_refuse = rule
        loaded = _load(text)
        if isinstance(loaded, list):
            seen["refused"] += 1
            assert must_refuse, loaded
            assert all("gen.yaml:4:" in p and "— fix: " in p for p in loaded), loaded
            return
        seen["loaded"] += 1
        assert not must_refuse, text
        for case, values in cases:
            assert check_case(loaded, case, values) == [], text

    check()
    assert seen["refused"] > 0 and seen["loaded"] > 0, seen


def test_rules_test_reports_a_rule_that_interferes(tmp_path: Path, ruleset: Ruleset) -> None:
    """`rules test` runs the property on every golden case: a condition on the page URL that
    slipped past the static check (compiled here without the loader) is reported there."""
    from dataclasses import replace

    from streams.core.rules.ruleset import compile_rule

    rule = ruleset.rule("install-attribution").source
    leaky = compile_rule(rule.model_copy(update={"condition": "!has(event.context.page_url)"}))
    bad = replace(ruleset, rules=(leaky, *ruleset.rules[1:]))
    result = run_file(RULES_DIR / "tests" / "install-attribution.yaml", bad)
    p11 = [f for f in result.failures if "P11 non-interference" in f]
    assert p11 and all("install-attribution.yaml:" in f for f in p11), result.failures
    assert run_file(RULES_DIR / "tests" / "install-attribution.yaml", ruleset).failures == []


def test_variants_add_and_remove_protected_records() -> None:
    """Presence is information: the variants add a protected field with the record holding
    it, and take a record away once nothing but protected fields kept it there."""
    event = {"event_id": "e", "event_type": "app_open", "event_time": 1, "user": {"email": "a@b.example"}}
    assert with_values(event, {"user.email": None}) == {k: v for k, v in event.items() if k != "user"}
    bare = {"event_id": "e", "event_type": "app_open", "event_time": 1}
    assert with_values(bare, {"user.phone": "+1 650 555 1212"})["user"] == {"phone": "+1 650 555 1212"}
    assert with_values(bare, {"context.consent.gpc": False}) == bare  # consent state is not invented
    kept = {**bare, "user": {"email": "a@b.example", "age_band": "adult"}}
    assert with_values(kept, {"user.email": None})["user"] == {"age_band": "adult"}


def test_a_condition_on_the_presence_of_a_protected_record_is_caught(ruleset: Ruleset) -> None:
    """Defense in depth behind `rules check`: a condition on whether `user` is there (compiled
    here without the loader, which refuses it) changes verdicts when an email is added."""
    from dataclasses import replace

    from streams.core.rules.ruleset import compile_rule

    rule = ruleset.rule("install-attribution").source
    leaky = compile_rule(rule.model_copy(update={"condition": "!has(event.user)"}))
    bad = replace(ruleset, rules=(leaky, *ruleset.rules[1:]))
    case: dict[str, Any] = {
        "event": {
            "event_id": "ev-1",
            "event_type": "app_install",
            "event_time": "2026-11-28T10:42:17Z",
            "account_id": ACCOUNT,
            "device": {"platform": "ios"},
            "context": {"country": "US"},
            "properties": {"campaign_id": "spring"},
        },
        "consent": [{"subject": f"account:{ACCOUNT}", "interest_based_ads": "granted", "jurisdiction": "US"}],
    }
    assert decide_case(case, b"", bad)[0].forwarded
    assert check_case(bad, case, {"user.email": "person@example.com"}) != []
    assert check_case(ruleset, case, {"user.email": "person@example.com"}) == []
