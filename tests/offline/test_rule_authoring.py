"""Rule authors' tools never say "fine" when they are not: test files, diff, reason coverage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.core.coverage import reachable_reasons
from streams.core.rules.loader import load_ruleset
from streams.core.rules.model import RuleFile
from streams.core.rules.ruleset import Ruleset, compile_rule
from streams.offline.rulediff import diff_rules, rule_document, structural_diff
from tests.conftest import RULES_DIR


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], capture_output=True, text=True, check=False
    )


def _copy_rules(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(RULES_DIR, target)
    return target


# --- rule-test files are validated as strictly as rules ---------------------------------------


def test_misspelled_test_keys_are_refused_with_line_and_did_you_mean(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path, "rules")
    (rules / "tests" / "install-attribution.yaml").write_text(
        "partner: install-attribution\n"
        "cases:\n"
        "  - name: typo in the event key\n"
        "    evnt: {event_type: app_open}\n"
        "    expect: {verdict: forward, reason: []}\n"
    )
    result = _cli("rules", "test", str(rules))
    assert result.returncode == 1, result.stdout
    assert "install-attribution.yaml:4: unknown key `evnt`" in result.stdout
    assert "did you mean `event`?" in result.stdout
    assert "install-attribution.yaml:5: unknown key `reason`" in result.stdout
    assert "did you mean `reasons`?" in result.stdout


def test_a_failing_enumerated_value_lists_the_allowed_values(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path, "rules")
    path = rules / "tests" / "install-attribution.yaml"
    text = path.read_text().replace("platform: ios, country: US,", "platform: tv, country: US,", 1)
    assert text != path.read_text()
    path.write_text(text)
    result = _cli("rules", "test", str(rules))
    assert result.returncode == 1
    assert "expected 'tv' (allowed values: android, ios)" in result.stdout


# --- reason coverage asks only for reachable reasons, and says why ------------------------------

_MINIMAL = {
    "partner": "acme",
    "jurisdictions": ["US"],
    "events": {
        "app_install": {"fields": {"id": {"from": "event_id", "transform": "pseudonym", "required": True}}}
    },
}


def test_required_field_missing_is_not_demanded_for_a_schema_required_source() -> None:
    reachable = reachable_reasons(compile_rule(RuleFile.model_validate(_MINIMAL)))
    assert "required_field_missing" not in reachable


def test_required_field_missing_is_demanded_with_the_reason_why() -> None:
    doc: dict[str, Any] = orjson.loads(orjson.dumps(_MINIMAL))
    doc["events"]["app_install"]["fields"]["platform"] = {"from": "device.platform", "required": True}
    reachable = reachable_reasons(compile_rule(RuleFile.model_validate(doc)))
    assert "optional 'device.platform'" in reachable["required_field_missing"]
    assert reachable["consent_missing"] == "the rule requires consent (interest_based_ads, ad_cookies_on_web)"


def test_rules_test_explains_each_uncovered_reason(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path, "rules")
    (rules / "tests" / "install-attribution.yaml").write_text(
        "partner: install-attribution\ncases:\n  - name: one\n    event: '{bad'\n"
        "    expect: {verdict: block, reasons: [malformed]}\n"
    )
    result = _cli("rules", "test", str(rules))
    assert result.returncode == 1
    assert "consent_tcf_denied: reachable because the rule requires a TCF legal basis" in result.stdout


# --- rules diff is total over the rule model ------------------------------------------------


def test_diff_reports_a_signup_status_change_that_used_to_read_unchanged(tmp_path: Path) -> None:
    new = _copy_rules(tmp_path, "new")
    path = new / "signup-conversions.yaml"
    path.write_text(
        path.read_text().replace("signup_status: [prospect] ", "signup_status: [prospect, member] ")
    )
    text = _cli("rules", "diff", str(RULES_DIR), str(new))
    assert text.returncode == 0
    assert "signup-conversions: changed" in text.stdout
    assert '~ events.site_visit.signup_status: ["prospect"] -> ["prospect","member"]' in text.stdout
    as_json = orjson.loads(_cli("rules", "diff", str(RULES_DIR), str(new), "--json").stdout)
    changes = {p["partner"]: p["changes"] for p in as_json["partners"]}
    assert changes["signup-conversions"] == [
        {
            "path": "events.site_visit.signup_status",
            "op": "changed",
            "before": ["prospect"],
            "after": ["prospect", "member"],
        }
    ]
    assert as_json["digest"]["before"] != as_json["digest"]["after"]


@cache
def _shipped() -> Ruleset:
    return load_ruleset(RULES_DIR)


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [leaf for key, sub in value.items() for leaf in _leaves(sub, (*path, key))]
    return [path]


def _mutated(value: Any, choice: int) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 + choice % 7
    if isinstance(value, str):
        return value[: max(0, len(value) - 1)] if choice % 2 else value + "x"
    if isinstance(value, list):
        return value[:-1] if value and choice % 2 else [*value, value[0] if value else "prospect"]
    if value is None:
        return ["prospect"] if choice % 2 else "x"
    return {}


def _set(doc: Any, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partner=st.sampled_from(["install-attribution", "signup-conversions"]), data=st.data())
def test_property_any_mutated_attribute_is_named_by_the_diff(partner: str, data: st.DataObject) -> None:
    original = _shipped().rule(partner).source
    doc = rule_document(original)
    path = data.draw(st.sampled_from(_leaves(doc)))
    mutated_doc: dict[str, Any] = orjson.loads(orjson.dumps(doc))
    _set(mutated_doc, path, _mutated(_get(doc, path), data.draw(st.integers(0, 100))))
    try:
        mutated = RuleFile.model_validate(mutated_doc)
    except ValidationError:
        assume(False)
        return
    assume(rule_document(mutated) != doc)
    named = {change.path for change in diff_rules(original, mutated)}
    dotted = ".".join(path)
    assert any(dotted == p or dotted.startswith(p + ".") or p.startswith(dotted + ".") for p in named), (
        dotted,
        named,
    )


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def test_unchanged_rules_diff_to_nothing() -> None:
    ruleset = _shipped()
    assert all(d.status == "unchanged" and not d.changes for d in structural_diff(ruleset, ruleset))
