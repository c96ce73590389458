"""Rules are code: linear-time patterns, bounded kept values, bounded loading, bounded conditions.

None of these tests times anything. The ones marked with a timeout would run for hours on
a backtracking regex engine or an unbounded YAML loader; here they finish at once.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import ConsentRecord, Event, StateSnapshot
from streams.core.rules import boundedyaml
from streams.core.rules.celreach import MAX_DEPTH, MAX_EXPRESSION_CHARS, CelSubsetError, reach
from streams.core.rules.condition import Condition, ConditionError
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.model import FieldSpec
from streams.core.rules.ruleset import MAX_KEPT_LENGTH, compile_field, compile_pattern, kept_max_length
from tests.conftest import RULES_DIR
from tests.core.test_rules_loader import BASE_RULE, _rules_dir

SNAPSHOT = StateSnapshot(consent=(ConsentRecord(subject="account:a", interest_based_ads="granted"),))
FIELD_LINE = "acme.yaml:8:"


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RulesetError) as info:
        load_ruleset(_rules_dir(tmp_path, text))
    return [str(p) for p in info.value.problems]


def _decide_campaign(tmp_path: Path, field: str, campaign: str) -> tuple[str, tuple[str, ...]]:
    ruleset = load_ruleset(_rules_dir(tmp_path, BASE_RULE + field)).with_keys({"acme": b"k" * 32})
    event = {
        "event_id": "e",
        "event_type": "app_install",
        "event_time": 1,
        "account_id": "a",
        "device": {"platform": "ios"},
        "context": {"country": "US"},
        "properties": {"campaign_id": campaign},
    }
    decision = decide(decode_json(orjson.dumps(event)), SNAPSHOT, ruleset)[0]
    return decision.verdict, decision.stripped


# --- patterns run on RE2 -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_backtracking_pattern_decides_long_values_at_once(tmp_path: Path) -> None:
    """`(a|a)*b` took 18 s for 28 characters under Python's `re`, doubling with each one."""
    field = "      campaign: {from: properties.campaign_id, pattern: '(a|a)*b', max_length: 1024}\n"
    verdict, stripped = _decide_campaign(tmp_path, field, "a" * 1_000)
    assert (verdict, stripped) == ("forward", ("campaign: pattern_mismatch",))
    assert not compile_pattern("(a|a)*b").matches_whole("a" * 10_000)
    assert compile_pattern("(a|a)*b").matches_whole("a" * 10_000 + "b")
    country = compile_pattern("[A-Z]{2}")
    assert country.matches_whole("US") and not country.matches_whole("USA")
    assert compile_pattern("é.").matches_whole("éü") and not compile_pattern("a").matches_whole("\ud800")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [(r"(a)\1", "invalid escape"), ("(?=a)a", "perl operator"), ("(?<!x)y", "perl operator")],
)
def test_pattern_re2_cannot_compile_is_refused(tmp_path: Path, pattern: str, why: str) -> None:
    field = f"      campaign: {{from: properties.campaign_id, pattern: '{pattern}', max_length: 64}}\n"
    problems = _problems(tmp_path, BASE_RULE + field)
    assert any(FIELD_LINE in p and "not valid RE2" in p and why in p and "lookaround" in p for p in problems)


# --- kept strings are length-bounded -----------------------------------------------------


def test_unbounded_free_string_is_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, BASE_RULE + "      campaign: properties.campaign_id\n")
    assert any(FIELD_LINE in p and "unbounded length" in p and "max_length" in p for p in problems), problems
    problems = _problems(
        tmp_path, BASE_RULE + "      campaign: {from: properties.campaign_id, pattern: 'a+'}\n"
    )
    assert any(FIELD_LINE in p and "unbounded length" in p for p in problems), problems


@pytest.mark.parametrize(
    ("spec", "event_types", "bound"),
    [
        ({"from": "properties.plan", "values": ["basic", "premium"]}, (), 7),
        ({"from": "context.country", "pattern": "[A-Z]{2}"}, (), 2),
        ({"from": "properties.campaign_id", "pattern": r"[a-z0-9][a-z0-9_\-]{0,63}"}, (), 64),
        ({"from": "properties.campaign_id", "pattern": "[a-z]+", "max_length": 12}, (), 12),
        ({"from": "event_type"}, ("app_install", "signup_step_completed"), 21),
        ({"from": "properties.campaign_id", "pattern": "(a|a)*b"}, (), None),
    ],
)
def test_kept_length_is_explicit_or_implied(
    spec: dict[str, object], event_types: tuple[str, ...], bound: int
) -> None:
    assert kept_max_length(FieldSpec.model_validate(spec), event_types) == bound


def test_too_long_value_is_dropped_before_matching(tmp_path: Path) -> None:
    field = "      campaign: {from: properties.campaign_id, max_length: 8}\n"
    assert _decide_campaign(tmp_path, field, "spring26") == ("forward", ())
    assert _decide_campaign(tmp_path, field, "spring-2026") == ("forward", ("campaign: too_long",))
    compiled = compile_field(
        "c", FieldSpec.model_validate({"from": "p", "pattern": "(a|a)*b", "max_length": 99})
    )
    assert compiled.refuse_kept("a" * 100) == "too_long"
    assert compiled.max_length <= MAX_KEPT_LENGTH


def test_shipped_rules_need_no_new_keys() -> None:
    """Every kept field of the shipped rules is bounded by its values, pattern or event types."""
    ruleset = load_ruleset(RULES_DIR)
    bounds = {f.name: f.max_length for r in ruleset.rules for e in r.events.values() for f in e.fields}
    assert bounds["country"] == 2 and bounds["campaign_id"] <= 64 and bounds["event_type"] <= 21


# --- YAML loading is bounded -------------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    [
        "partner: acme",
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "jurisdictions: [US]",
        "events: {app_install: {fields: {platform: {from: device.platform, values: [ios]}}}}",
    ]
)


@pytest.mark.timeout(60)
def test_alias_bomb_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """Eleven lines expanding to 9**9 (387 million) strings; refused while still a node graph."""
    problems = _problems(tmp_path, BILLION_LAUGHS)
    assert any("acme.yaml:7:" in p and "aliases are resolved" in p and "fix:" in p for p in problems), (
        problems
    )


@pytest.mark.timeout(60)
def test_alias_bomb_in_rule_test_file_is_refused(tmp_path: Path) -> None:
    from streams.offline.ruletests import run_file

    path = tmp_path / "acme.yaml"
    path.write_text(BILLION_LAUGHS.replace("partner: acme", "partner: acme\ncases: []"))
    result = run_file(path, load_ruleset(RULES_DIR))
    assert result.failures and "aliases are resolved" in result.failures[0]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("partner: acme\nx: " + "[" * 40 + "]" * 40 + "\n", 2, f"deeper than {boundedyaml.MAX_DEPTH}"),
        ("partner: acme\nx:\n  " + "[" * 1000 + "]" * 1000 + "\n", 3, f"deeper than {boundedyaml.MAX_DEPTH}"),
        ("partner: acme\nx: &x\n  - *x\n", 2, "refers to itself"),
        (
            "partner: acme\n"
            + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" if i else "l0: &l0 [x]\n" for i in range(40)),
            33,
            "(aliases expanded)",
        ),
    ],
)
def test_deep_or_recursive_yaml_is_refused(tmp_path: Path, text: str, line: int, message: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(f"acme.yaml:{line}:" in p and message in p for p in problems), problems


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    padding = "# " + "x" * 1000 + "\n"
    text = BASE_RULE + padding * (boundedyaml.MAX_FILE_BYTES // len(padding) + 1)
    problems = _problems(tmp_path, text)
    assert any("acme.yaml:1:" in p and "larger than" in p for p in problems), problems


def test_merge_keys_still_work() -> None:
    ruleset = load_ruleset(RULES_DIR)
    plan = ruleset.rule("signup-conversions").events["plan_selected"]
    assert {"em", "ph", "campaign_id", "plan"} <= {f.name for f in plan.fields}


# --- CEL conditions have a bounded cost --------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ('event.properties.watch_history.exists(t, t == "x")', "list written in the rule"),
        ('event.device.platform.all(c, c == "i")', "list written in the rule"),
        ('["a"].exists(x, ["b"].exists(y, x == y))', "nests one iteration"),
        ("[" + ",".join(["1"] * 65) + "].exists(x, x == 1)", "over 64"),
        ("1 == 1 && " * 300 + "true", f"over {MAX_EXPRESSION_CHARS}"),
        ("!" * (MAX_DEPTH + 1) + "true", f"deeper than {MAX_DEPTH}"),
        (" || ".join(["1"] * 300), "more than"),
        ('event.properties.step + "x" == "ax"', "uses `\\+`"),
        ("[" + ",".join(["1"] * 33) + "].all(x, x == size(event.properties.step))", "more than 32 times"),
    ],
)
def test_unbounded_condition_is_refused(condition: str, expected: str) -> None:
    with pytest.raises(CelSubsetError, match=expected):
        reach(condition)


def test_condition_over_a_huge_value_fails_closed_unevaluated() -> None:
    """A 1 MB value never reaches CEL (nor the memo): the rule blocks as rule_condition_error."""
    condition = Condition('event.properties.campaign_id.contains("spring")')
    base = {"event_id": "e", "event_type": "app_install", "event_time": 1}
    huge = Event.model_validate({**base, "properties": {"campaign_id": "x" * 1_000_000 + "spring"}})
    small = Event.model_validate({**base, "properties": {"campaign_id": "spring"}})
    with pytest.raises(ConditionError, match="inputs over"):
        condition.holds(huge, {}, "")
    assert condition.holds(small, {}, "")
    assert len(condition._cache) == 1
