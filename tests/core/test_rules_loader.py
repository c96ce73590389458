"""Rule loading: every refusal names the file, the line, what is wrong and how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.runtime.config import Settings, guard_topics_from_env
from tests.conftest import RULES_DIR

BASE_RULE = """\
partner: acme
jurisdictions: [US]
events:
  app_install:
    fields:
      event_id: {from: event_id, transform: pseudonym}
      platform: {from: device.platform, values: [ios, android, tv, web]}
"""


def _rules_dir(tmp_path: Path, text: str, name: str = "acme.yaml") -> Path:
    shutil.copy(RULES_DIR / "_leak-scan.yaml", tmp_path / "_leak-scan.yaml")
    (tmp_path / name).write_text(text)
    return tmp_path


def _problems(directory: Path) -> list[str]:
    with pytest.raises(RulesetError) as info:
        load_ruleset(directory)
    return [str(p) for p in info.value.problems]


def test_shipped_rules_load_with_a_stable_digest() -> None:
    first, second = load_ruleset(RULES_DIR), load_ruleset(RULES_DIR)
    assert first.digest == second.digest and first.digest.startswith("sha256:")
    assert first.partners == ("install-attribution", "signup-conversions")


def test_minimal_rule_loads(tmp_path: Path) -> None:
    ruleset = load_ruleset(_rules_dir(tmp_path, BASE_RULE))
    assert ruleset.rule("acme").topic == "partner.acme.events"


@pytest.mark.parametrize(
    "content_type", ["title_selected", "playback_started", "search", "page_view", "title_rated"]
)
def test_content_event_type_is_refused(tmp_path: Path, content_type: str) -> None:
    text = BASE_RULE + f"  {content_type}:\n    fields:\n      platform: device.platform\n"
    problems = _problems(_rules_dir(tmp_path, text))
    assert any("acme.yaml:8:" in p and "content event" in p for p in problems), problems


@pytest.mark.parametrize(
    ("source", "transform", "expected"),
    [
        ("properties.title_name", "keep", "tagged 'content'"),
        ("context.page_url", "keep", "tagged 'url'"),
        ("properties.search_query", "keep", "tagged 'search'"),
        ("properties.watch_history", "keep", "tagged 'content'"),
        ("user.email", "keep", "use transform ['sha256_email']"),
        ("context.ip", "keep", "use transform ['truncate_ip']"),
        ("account_id", "keep", "use transform ['pseudonym']"),
        ("user.phone", "sha256_email", "use transform ['sha256_phone']"),
        ("context.user_agent", "keep", "may never be projected"),
        ("device", "keep", "may never be projected"),
        ("properties.favourite_show", "keep", "does not declare"),
    ],
)
def test_tagged_fields_are_refused(tmp_path: Path, source: str, transform: str, expected: str) -> None:
    text = BASE_RULE + f"      leaky: {{from: {source}, transform: {transform}}}\n"
    problems = _problems(_rules_dir(tmp_path, text))
    assert any("acme.yaml:8:" in p and expected in p for p in problems), problems


def test_typo_names_line_and_fix(tmp_path: Path) -> None:
    text = BASE_RULE.replace("jurisdictions", "jurisdictons")
    problems = _problems(_rules_dir(tmp_path, text))
    assert any("acme.yaml:2:" in p and "jurisdictons" in p and "fix:" in p for p in problems), problems


def test_bad_transform_value_names_line(tmp_path: Path) -> None:
    text = BASE_RULE.replace("transform: pseudonym", "transform: md5")
    problems = _problems(_rules_dir(tmp_path, text))
    assert any("acme.yaml:6:" in p and "transform" in p for p in problems), problems


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    problems = _problems(_rules_dir(tmp_path, BASE_RULE + "  oops: [unclosed\n"))
    assert any("acme.yaml:" in p and "YAML error" in p for p in problems), problems


def test_gdpr_scope_needs_tcf(tmp_path: Path) -> None:
    problems = _problems(_rules_dir(tmp_path, BASE_RULE.replace("[US]", "[US, EEA]")))
    assert any("acme.yaml:2:" in p and "consent.tcf" in p for p in problems), problems


def test_content_output_name_is_refused(tmp_path: Path) -> None:
    problems = _problems(_rules_dir(tmp_path, BASE_RULE + "      page_url: device.platform\n"))
    assert any("acme.yaml:8:" in p and "output field name" in p for p in problems), problems


def test_bad_cel_condition_is_refused(tmp_path: Path) -> None:
    problems = _problems(_rules_dir(tmp_path, BASE_RULE + "condition: 'event.device.platform =='\n"))
    assert any("acme.yaml:8:" in p and "CEL" in p for p in problems), problems
    problems = _problems(_rules_dir(tmp_path, BASE_RULE + "condition: 'secrets.key == 1'\n"))
    assert any("unknown variables" in p for p in problems), problems


def test_file_name_must_match_partner(tmp_path: Path) -> None:
    problems = _problems(_rules_dir(tmp_path, BASE_RULE, name="other.yaml"))
    assert any("other.yaml:1:" in p and "rename" in p for p in problems), problems


def test_cli_rules_check_refuses_broken_directory(tmp_path: Path) -> None:
    text = BASE_RULE + "  playback_started:\n    fields:\n      platform: device.platform\n"
    result = subprocess.run(
        [sys.executable, "-m", "streams", "rules", "check", str(_rules_dir(tmp_path, text))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{tmp_path}/acme.yaml:8:" in result.stderr
    assert "playback_started" in result.stderr


def test_cli_rules_check_and_test_pass_on_shipped_rules() -> None:
    for command in ("check", "test"):
        result = subprocess.run(
            [sys.executable, "-m", "streams", "rules", command, str(RULES_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_cli_rules_test_reports_uncovered_reasons(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE)
    (directory / "tests").mkdir()
    (directory / "tests" / "acme.yaml").write_text(
        "partner: acme\ncases:\n  - name: one\n    event: '{bad'\n"
        "    expect: {verdict: block, reasons: [malformed]}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "streams", "rules", "test", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "1 passed, 0 failed" in result.stdout
    assert "consent_gpc" in result.stdout  # uncovered reason listed


def _vocabulary_line(text: str) -> int:
    lines = (RULES_DIR / "_leak-scan.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_forbidden_output_name_names_the_token_and_the_vocabulary_file(tmp_path: Path) -> None:
    directory = _rules_dir(
        tmp_path, BASE_RULE + "      watch_hour: {from: event_time, transform: coarsen_time}\n"
    )
    vocabulary = directory / "_leak-scan.yaml"
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:8: output field name 'watch_hour' contains the token 'watch', listed in "
        f"forbidden_key_tokens ({vocabulary}:{_vocabulary_line(' watch, ')}) — fix: choose a neutral output "
        f"name; or, if 'watch' names no content for any partner, remove it from forbidden_key_tokens in "
        f"{vocabulary} (a vocabulary change is a ruleset change: review it with `rules diff`)"
    ]


def test_output_name_like_a_title_names_the_vocabulary_entry(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE + "      bird_box: {from: device.platform, values: [ios]}\n")
    vocabulary = directory / "_leak-scan.yaml"
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:8: output field name 'bird_box' looks like forbidden content "
        f"(title_name, from title_names ({vocabulary}:{_vocabulary_line('title_names:')})) — fix: choose a "
        "neutral output name: partners never receive keys that look like content or identifiers"
    ]


def test_transform_typo_gets_a_did_you_mean_and_no_second_problem(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE.replace("transform: pseudonym", "transform: pseudonim"))
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:6: events.app_install.fields.event_id.transform: unknown value "
        "'pseudonim' — fix: did you mean 'pseudonym'? (allowed: keep, sha256_email, sha256_phone, pseudonym, "
        "truncate_ip, coarsen_time, ad_id)"
    ]


def test_enumerated_rule_value_without_a_near_miss_lists_the_allowed_values(tmp_path: Path) -> None:
    text = BASE_RULE.replace("transform: pseudonym}", "transform: pseudonym, granularity: fortnight}")
    directory = _rules_dir(tmp_path, text)
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:6: events.app_install.fields.event_id.granularity: unknown value "
        "'fortnight' — fix: use one of: minute, hour, day"
    ]


def test_a_field_that_is_neither_path_nor_mapping_is_one_problem(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE + "      extra: [device.platform]\n")
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:8: events.app_install.fields.extra: not a field — fix: write a source "
        "path (`name: path`) or a mapping {from: path, transform: ...}"
    ]


def test_a_misspelled_required_key_is_one_problem_with_a_did_you_mean(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE.replace("jurisdictions", "jurisdictons"))
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:2: jurisdictons: unknown key 'jurisdictons' — fix: did you mean "
        "'jurisdictions'? (keys here: partner, rule_id, description, topic, jurisdictions, consent, "
        "signup_status, identifiers, condition, events, optout_notices)"
    ]


def test_a_misspelled_field_key_names_the_keys_of_a_field(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE.replace("transform: pseudonym}", "transfrom: pseudonym}"))
    assert _problems(directory) == [
        f"{directory / 'acme.yaml'}:6: events.app_install.fields.event_id.transfrom: unknown key 'transfrom' "
        "— fix: did you mean 'transform'? (keys here: from, transform, granularity, values, pattern, "
        "max_length, required)"
    ]


def test_a_misspelled_vocabulary_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE)
    vocabulary = directory / "_leak-scan.yaml"
    vocabulary.write_text(vocabulary.read_text().replace("title_names:", "title_name:"))
    line = _vocabulary_line("title_names:")
    assert _problems(directory) == [
        f"{vocabulary}:{line}: title_name: unknown key 'title_name' — fix: did you mean 'title_names'? "
        "(keys here: title_names, title_id_patterns, forbidden_key_tokens, max_words, max_tokens)"
    ]


GUARD_TOPICS = {
    "internal.events": "an input topic",
    "privacy.consent": "the consent state topic",
    "audit.withheld": "the blocked-event topic",
}


@pytest.mark.parametrize("topic", ["audit.withheld", "internal.events", "privacy.consent"])
def test_a_rule_may_not_write_to_a_topic_of_the_guard_as_configured(tmp_path: Path, topic: str) -> None:
    directory = _rules_dir(tmp_path, BASE_RULE.replace("jurisdictions:", f"topic: {topic}\njurisdictions:"))
    with pytest.raises(RulesetError) as info:
        load_ruleset(directory, reserved_topics=GUARD_TOPICS)
    expected = f"{directory / 'acme.yaml'}:2: topic '{topic}' is {GUARD_TOPICS[topic]}"
    assert [str(p) for p in info.value.problems] == [expected + " — fix: use partner.<id>.events"]


def test_guard_blocked_is_an_ordinary_topic_when_the_blocked_topic_is_configured_elsewhere(
    tmp_path: Path,
) -> None:
    directory = _rules_dir(
        tmp_path, BASE_RULE.replace("jurisdictions:", "topic: guard.blocked\njurisdictions:")
    )
    assert load_ruleset(directory, reserved_topics=GUARD_TOPICS).rule("acme").topic == "guard.blocked"


def test_rules_check_refuses_the_blocked_topic_named_in_the_environment(tmp_path: Path) -> None:
    directory = _rules_dir(
        tmp_path, BASE_RULE.replace("jurisdictions:", "topic: audit.withheld\njurisdictions:")
    )

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
        command = [sys.executable, "-m", "streams", "rules", "check", str(directory)]
        return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=120)

    assert check().returncode == 0
    refused = check(PARTNER_GUARD_BLOCKED_TOPIC="audit.withheld")
    assert refused.returncode == 2
    assert "topic 'audit.withheld' is the blocked-event topic" in refused.stderr


def test_the_guard_topics_are_the_configured_names() -> None:
    settings = Settings(
        bootstrap_servers="localhost:9092",
        input_topics=["web.events", "app.events"],
        blocked_topic="audit.withheld",
    )
    assert settings.guard_topics() == {
        "web.events": "an input topic",
        "app.events": "an input topic",
        "privacy.consent": "the consent state topic",
        "member.signup-status": "the sign-up status state topic",
        "audit.withheld": "the blocked-event topic",
        "guard.forwarded": "the forwarded-marker topic",
    }
    environment = {
        "PARTNER_GUARD_INPUT_TOPICS": "web.events,app.events",
        "PARTNER_GUARD_BLOCKED_TOPIC": "audit.withheld",
    }
    assert guard_topics_from_env(environment) == settings.guard_topics()
    assert guard_topics_from_env({})["guard.blocked"] == "the blocked-event topic"


def test_the_default_partner_topic_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(RulesetError) as info:
        reserved = {"partner.acme.events": "the blocked-event topic"}
        load_ruleset(_rules_dir(tmp_path, BASE_RULE), reserved_topics=reserved)
    messages = [p.message for p in info.value.problems]
    assert messages == ["topic 'partner.acme.events' is the blocked-event topic"]
