"""Every topic has one role: a start whose settings or rules give one topic two roles is refused.

The blocked topic set to an input topic re-reads every blocked record as new input, without
end; a partner topic that is also a state or input topic mixes partner records into what the
guard reads. Each is refused before anything connects, in one line.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.broker.embedded import free_port
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.runtime.config import REPUBLISHED_TOPIC, Settings, topic_role_clash
from streams.runtime.ops.startup import StartupError, check_topic_roles, keyed_setup
from tests.runtime.ops.test_operator_errors import KEYS, RULES, refusal, run_cli

ROLE_SETTINGS = ("consent_topic", "signup_status_topic", "blocked_topic")


def _settings(**values: object) -> Settings:
    return Settings(bootstrap_servers="127.0.0.1:1", **values)  # type: ignore[arg-type]


def test_run_refuses_the_blocked_topic_as_an_input_in_one_line() -> None:
    """The issue's case: before anything connects (the bootstrap is a closed port), exit 2."""
    result = run_cli(
        ["run", "--rules", str(RULES)],
        {
            **KEYS,
            "PARTNER_GUARD_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "PARTNER_GUARD_INPUT_TOPICS": "web.events,app.events",
            "PARTNER_GUARD_BLOCKED_TOPIC": "app.events",
        },
    )
    assert refusal(result) == (
        "refusing to start: topic 'app.events' is both an input topic (input_topics) and the "
        "blocked-event topic (blocked_topic); every topic has one role: change blocked_topic"
    )


@pytest.mark.parametrize("setting", ROLE_SETTINGS)
def test_each_guard_topic_equal_to_an_input_is_refused(setting: str) -> None:
    settings = _settings(input_topics=["a", "internal.events"], **{setting: "internal.events"})
    clash = topic_role_clash(settings.topic_roles())
    assert clash is not None and clash.startswith("topic 'internal.events' is both an input topic")
    assert clash.endswith(f"change {setting}")


@pytest.mark.parametrize("setting", (*ROLE_SETTINGS, "input_topics"))
def test_the_republish_marker_topic_is_no_other_topic(setting: str) -> None:
    value: object = [REPUBLISHED_TOPIC] if setting == "input_topics" else REPUBLISHED_TOPIC
    clash = topic_role_clash(_settings(**{setting: value}).topic_roles())
    assert clash is not None and f"topic '{REPUBLISHED_TOPIC}' is both the republish marker topic" in clash


def test_the_shipped_defaults_and_rules_start(tmp_path: Path) -> None:
    settings = _settings(dev=True)
    assert topic_role_clash(settings.topic_roles()) is None
    keyed_setup(settings, load_ruleset(RULES))  # no refusal


NAMES = st.sampled_from(["t0", "t1", "t2", "t3", "t4", "t5", "t6"])


@given(inputs=st.lists(NAMES, min_size=1, max_size=3), consent=NAMES, signup=NAMES, blocked=NAMES)
def test_a_clash_is_reported_exactly_when_two_roles_share_a_topic(
    inputs: list[str], consent: str, signup: str, blocked: str
) -> None:
    """Listing one input twice is one role; any other shared name is a clash."""
    settings = _settings(
        input_topics=inputs, consent_topic=consent, signup_status_topic=signup, blocked_topic=blocked
    )
    names = [*set(inputs), consent, signup, blocked]
    assert (topic_role_clash(settings.topic_roles()) is None) == (len(set(names)) == len(names))


def _two_partners_one_topic(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules, ignore=shutil.ignore_patterns("tests"))
    path = rules / "signup-conversions.yaml"
    text = path.read_text()
    path.write_text(text.replace("partner.signup-conversions.events", "partner.install-attribution.events"))
    return rules


def test_two_partners_writing_to_one_topic_are_refused_at_start(tmp_path: Path) -> None:
    """`rules check` refuses it first (with file and line); the start refuses it again, for a
    ruleset put together without the loader's checks."""
    rules = _two_partners_one_topic(tmp_path)
    with pytest.raises(RulesetError, match="is also written by partner 'install-attribution'"):
        load_ruleset(rules)
    shipped = load_ruleset(RULES)
    shared = replace(shipped.rules[1], topic=shipped.rules[0].topic)
    ruleset = replace(shipped, rules=(shipped.rules[0], shared))
    with pytest.raises(StartupError) as refused:
        keyed_setup(_settings(dev=True), ruleset)
    assert refused.value.report() == (
        "refusing to start: topic 'partner.install-attribution.events' is both the output topic of "
        "partner 'install-attribution' (topic in install-attribution.yaml) and the output topic of "
        "partner 'signup-conversions' (topic in signup-conversions.yaml); every topic has one role: "
        "change topic in signup-conversions.yaml"
    )


def test_a_partner_writing_to_the_republish_marker_topic_is_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules, ignore=shutil.ignore_patterns("tests"))
    path = rules / "signup-conversions.yaml"
    path.write_text(path.read_text().replace("partner.signup-conversions.events", REPUBLISHED_TOPIC))
    with pytest.raises(StartupError, match="republish marker topic"):
        check_topic_roles(_settings(dev=True), load_ruleset(rules))


def test_an_input_pattern_is_refused_it_could_match_the_guards_own_topics() -> None:
    """librdkafka reads a name starting with ^ as a regex subscription: `^guard\\..*` would
    subscribe to the blocked topic, and to every partner topic of that prefix."""
    clash = topic_role_clash(_settings(input_topics=["internal.events", r"^guard\..*"]).topic_roles())
    assert clash is not None and clash.startswith(r"input topic '^guard\..*' is a pattern")
