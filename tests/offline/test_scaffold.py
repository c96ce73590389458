"""`rules test --scaffold`: one case per reachable reason, found by the core, and a file that
`rules test` passes for every shipped rule (and fails once the rule no longer does what it says)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.core.coverage import reachable_reasons
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.offline.ruletests import run_file
from streams.offline.scaffold import scaffold
from tests.conftest import RULES_DIR

PARTNERS = load_ruleset(RULES_DIR).partners


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], capture_output=True, text=True, check=False
    )


def _rules_without_tests(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES_DIR, target)
    for path in (target / "tests").glob("*.yaml"):
        path.unlink()
    return target


@pytest.mark.parametrize("partner", PARTNERS)
def test_the_scaffold_of_each_shipped_rule_passes_rules_test(tmp_path: Path, partner: str) -> None:
    rules = _rules_without_tests(tmp_path)
    ruleset = load_ruleset(rules)
    written = scaffold(ruleset, partner)
    assert written.base_forwards and not written.not_found
    path = rules / "tests" / f"{partner}.yaml"
    path.write_text(written.text)
    result = run_file(path, ruleset)
    assert result.ok, (result.failures, result.uncovered)
    assert result.passed == written.cases == len(reachable_reasons(ruleset.rule(partner))) + 1
    assert result.covered == set(reachable_reasons(ruleset.rule(partner)))


@pytest.mark.parametrize("partner", PARTNERS)
def test_each_case_is_minimal_one_reason_each(partner: str) -> None:
    text = scaffold(load_ruleset(RULES_DIR), partner).text
    for reason in reachable_reasons(load_ruleset(RULES_DIR).rule(partner)):
        assert f'- name: "{reason}"' in text
        block = text.split(f'- name: "{reason}"', 1)[1].split("- name:", 1)[0]
        assert f'"reasons":["{reason}"]' in block  # exactly that reason, nothing else


def test_the_scaffold_can_fail_when_the_rule_changes(tmp_path: Path) -> None:
    rules = _rules_without_tests(tmp_path)
    ruleset = load_ruleset(rules)
    path = rules / "tests" / "install-attribution.yaml"
    path.write_text(scaffold(ruleset, "install-attribution").text)
    rule_file = rules / "install-attribution.yaml"
    rule_file.write_text(
        "\n".join(line for line in rule_file.read_text().splitlines() if not line.startswith("condition:"))
    )
    result = run_file(path, load_ruleset(rules))
    assert not result.ok and any("rule_condition_false" in failure for failure in result.failures)


def test_the_command_writes_once_and_names_what_to_do(tmp_path: Path) -> None:
    rules = _rules_without_tests(tmp_path)
    first = _cli("rules", "test", str(rules), "--scaffold", "signup-conversions")
    assert first.returncode == 0, first.stderr
    assert "check every `expect`" in first.stdout and (rules / "tests" / "signup-conversions.yaml").is_file()
    again = _cli("rules", "test", str(rules), "--scaffold", "signup-conversions")
    assert again.returncode == 2 and "not overwritten" in again.stderr
    unknown = _cli("rules", "test", str(rules), "--scaffold", "nobody")
    assert unknown.returncode == 2 and "no such partner" in unknown.stderr


def test_a_typo_in_a_source_path_gets_a_did_you_mean(tmp_path: Path) -> None:
    rules = _rules_without_tests(tmp_path)
    rule_file = rules / "install-attribution.yaml"
    rule_file.write_text(rule_file.read_text().replace("from: device.platform,", "from: device.platfrom,"))
    with pytest.raises(RulesetError) as refused:
        load_ruleset(rules)
    text = str(refused.value.problems[0])
    assert "did you mean 'device.platform'?" in text and text.index("did you mean") < text.index("declare it")


def test_a_verdict_mismatch_names_the_reasons_the_core_gave(tmp_path: Path) -> None:
    rules = _rules_without_tests(tmp_path)
    ruleset = load_ruleset(rules)
    path = rules / "tests" / "install-attribution.yaml"
    text = scaffold(ruleset, "install-attribution").text
    kids = text.split('- name: "kids_profile"', 1)[1].split("- name:", 1)[0]
    path.write_text(
        text.replace(
            kids, kids.replace('{"verdict":"block","reasons":["kids_profile"]}', '{"verdict":"forward"}')
        )
    )
    failures = run_file(path, ruleset).failures
    assert (
        len(failures) == 1 and "verdict 'block' (reasons ['kids_profile']), expected 'forward'" in failures[0]
    )
    assert "details: []" not in failures[0]


def test_rules_diff_shows_a_new_partner_as_a_readable_block(tmp_path: Path) -> None:
    rules = _rules_without_tests(tmp_path)
    (rules / "visit-measure.yaml").write_text(
        "partner: visit-measure\njurisdictions: [US]\nconsent: {ad_cookies_on_web: not_required}\n"
        "signup_status: {allowed: [prospect]}\nevents:\n  site_visit:\n    fields:\n"
        "      visit_id: {from: event_id, transform: pseudonym, required: true}\n"
        "      visit_day: {from: event_time, transform: coarsen_time, granularity: day}\n"
        "      country: {from: context.country, pattern: '[A-Z]{2}'}\n"
    )
    shown = _cli("rules", "diff", str(RULES_DIR), str(rules))
    assert shown.returncode == 0, shown.stderr
    block = shown.stdout.split("visit-measure: added\n", 1)[1]
    assert "+ new partner visit-measure (rule visit-measure) -> topic partner.visit-measure.events" in block
    assert "consent needed: interest-based ads granted\n" in block and "sign-up status: prospect" in block
    assert "visit_day <- event_time (coarsened time; day)" in block
    assert "country <- context.country (kept; pattern [A-Z]{2})\n" in block  # no time granularity on it
    assert "visit_id <- event_id (keyed pseudonym; required)" in block and '{"' not in block
