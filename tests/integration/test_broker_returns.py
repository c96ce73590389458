"""The broker comes back (embedded broker): stopped under a running guard, started again on
the same port, empty, and the topics recreated with another partition count.

Readiness means "this instance owns partitions and is consuming them, or the group has
nothing for it", and the group-level lag gauge shows records no one consumes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import GuardProcess, produce, read_blocked, start_guard
from tests.integration.records import app_install, consent, keyed_event

pytestmark = pytest.mark.integration

INPUT = "internal.events"
STATE_TOPICS = ["privacy.consent", "member.signup-status"]
GROUP = "returns"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[EmbeddedBroker]]:
    """The brokers a test starts (stopped at the end)."""
    started: list[EmbeddedBroker] = []
    yield started
    for broker in started:
        broker.stop()


def _wait_for(
    condition: Callable[[], bool], guard: GuardProcess, what: str, timeout_s: float = 120.0
) -> None:
    """Hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert guard.process.poll() is None, f"guard exited with {guard.process.returncode}: {guard.log()}"
        assert time.monotonic() < deadline, f"{what}: {guard.log()}"
        time.sleep(0.5)


def _seed(bootstrap: str, partitions: int, accounts: list[str], suffix: str) -> list[str]:
    ensure_topics({"bootstrap.servers": bootstrap}, [INPUT], STATE_TOPICS, partitions)
    produce(bootstrap, "privacy.consent", [consent(a, "granted", ad_cookies="granted") for a in accounts])
    events = [keyed_event(app_install(f"ev-{a}-{suffix}", a)) for a in accounts]
    produce(bootstrap, INPUT, events)
    return [f"ev-{a}-{suffix}" for a in accounts]


def _lost_and_back(
    brokers: list[EmbeddedBroker], port: int, tmp_path: Path, guard: GuardProcess
) -> EmbeddedBroker:
    """Stop the broker under the guard, wait for not-ready, start it again empty on the same port,
    and wait until the guard's consumer rejoined a group whose input topic does not exist yet."""
    brokers[0].stop()
    _wait_for(lambda: guard.status("/readyz") == 503, guard, "not ready without a broker")
    rejoined_before = len(re.findall("assigned 0 partition", guard.log()))
    back = EmbeddedBroker.start(port, log_path=tmp_path / "tansu-2.log")
    brokers.append(back)
    _wait_for(
        lambda: len(re.findall("assigned 0 partition", guard.log())) > rejoined_before,
        guard,
        "the guard did not rejoin the group",
    )
    assert guard.status("/readyz") == 503  # rejoined, but the input topic has no partitions
    return back


def test_an_instance_left_without_partitions_is_not_ready_and_the_group_lag_shows_it(
    brokers: list[EmbeddedBroker], port: int, tmp_path: Path
) -> None:
    brokers.append(EmbeddedBroker.start(port, log_path=tmp_path / "tansu-1.log"))
    accounts = [f"bc-{i:02d}" for i in range(6)]
    _seed(brokers[0].bootstrap, 3, accounts, "1")
    # the consumer refreshes metadata only every 10 minutes: it will not see the recreated
    # input within this test, so it stays without partitions (librdkafka's default is 5 min)
    refresh = {"PARTNER_GUARD_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "600000"}
    guard = start_guard(brokers[0].bootstrap, tmp_path, INPUT, GROUP, refresh, transactional_id="returns-0")
    try:
        guard.wait_ready()
        _wait_for(
            lambda: guard.metric_value("partner_guard_records_in_total") >= len(accounts), guard, "decided"
        )
        back = _lost_and_back(brokers, port, tmp_path, guard)
        _seed(back.bootstrap, 2, accounts, "2")  # recreated with 2 partitions, 6 events waiting

        def stalled() -> bool:
            waiting = sum(
                guard.metric_value("partner_guard_group_lag_records", topic=INPUT, partition=str(p))
                for p in (0, 1)
            )
            return waiting > 0 and guard.status("/readyz") == 503

        _wait_for(stalled, guard, "an instance with no partitions and records waiting must not be ready")
        assert guard.metric_value("partner_guard_assigned_partitions") == 0
        assert 'partition="2"' not in "".join(  # the old topic's third partition is gone
            line
            for line in guard.metrics().splitlines()
            if line.startswith("partner_guard_group_lag_records{")
        )
        assert guard.metric_value("partner_guard_records_in_total") == len(accounts)  # nothing new decided
        assert "not ready: this instance owns no input partition" in guard.log()
    finally:
        guard.stop()


def test_after_the_broker_returns_the_guard_owns_the_recreated_partitions(
    brokers: list[EmbeddedBroker], port: int, tmp_path: Path
) -> None:
    brokers.append(EmbeddedBroker.start(port, log_path=tmp_path / "tansu-1.log"))
    accounts = [f"br-{i:02d}" for i in range(6)]
    _seed(brokers[0].bootstrap, 3, accounts, "1")
    guard = start_guard(brokers[0].bootstrap, tmp_path, INPUT, GROUP, transactional_id="returns-1")
    try:
        guard.wait_ready()
        _wait_for(
            lambda: guard.metric_value("partner_guard_records_in_total") >= len(accounts), guard, "decided"
        )
        back = _lost_and_back(brokers, port, tmp_path, guard)
        ensure_topics({"bootstrap.servers": back.bootstrap}, [INPUT], STATE_TOPICS, 2)
        # the recreated input is seen at the consumer's next metadata refresh (10 s), not in 5 min
        _wait_for(  # input partitions only (the consent topic is a group input too, for notices)
            lambda: guard.metric_value("partner_guard_assigned_partitions") == 2,
            guard,
            "recreated input not assigned",
        )
        _wait_for(lambda: guard.status("/readyz") == 200, guard, "owns partitions again: ready")
    finally:
        guard.stop()
    # what it decides next: the embedded broker forgot the guard's transactional id, so the
    # first transaction's abort hangs and the watchdog exits 4 for a restart (docs/operations.md).
    # A restarted guard decides everything produced while it was away.
    events = _seed(back.bootstrap, 2, accounts, "2")
    restarted = start_guard(back.bootstrap, tmp_path, INPUT, GROUP, transactional_id="returns-1")
    try:
        restarted.wait_ready()
        _wait_for(
            lambda: restarted.metric_value("partner_guard_records_in_total") >= len(events),
            restarted,
            "decided after the restart",
        )
        assert {b["event_id"] for b in read_blocked(back.bootstrap)} <= set(events)
    finally:
        assert restarted.stop() == 0, restarted.log()
