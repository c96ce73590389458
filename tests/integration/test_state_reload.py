"""The state tables when the state topics change under a running guard (embedded broker).

The broker restarts empty and the consent topic is recreated with another partition count,
holding a denial: the reader's applied positions lie past the new ends, so resuming would
never read it. The tables are read again from the beginning instead, before the next
decision: the denial applies, and a grant that only the old topic held is gone.

(In process, on `GuardState`: a whole guard cannot commit after the embedded broker restarts,
because the broker forgot its transactional id; see test_broker_returns.py. Deleting a topic
under an assigned librdkafka 2.16 consumer on the embedded broker crashes the process with
SIGSEGV, on main as well, so the topic is recreated by a broker restart here; a guard restarted
after such a crash rebuilds its disk store, see test_store_meets.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.runtime.config import Settings
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.pipeline.decider import GuardState
from tests.integration.kafka_helpers import produce
from tests.integration.records import consent

pytestmark = pytest.mark.integration

STATE_TOPICS = ["privacy.consent", "member.signup-status"]


@pytest.fixture
def brokers() -> Iterator[list[EmbeddedBroker]]:
    started: list[EmbeddedBroker] = []
    yield started
    for broker in started:
        broker.stop()


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_state_topics_recreated_under_a_running_guard_are_read_again(
    brokers: list[EmbeddedBroker], tmp_path: Path, store: str
) -> None:
    port = free_port()
    brokers.append(EmbeddedBroker.start(port, log_path=tmp_path / "tansu-1.log"))
    bootstrap = brokers[0].bootstrap
    ensure_topics({"bootstrap.servers": bootstrap}, [], STATE_TOPICS, 3)
    accounts = [f"sr-{i:03d}" for i in range(30)]
    produce(
        bootstrap,
        "privacy.consent",
        [consent(a, "granted", updated_at="2026-11-01T00:00:00Z") for a in accounts],
    )
    settings = Settings(bootstrap_servers=bootstrap, state_store=store, state_dir=tmp_path / "state")
    state = GuardState(settings, {"bootstrap.servers": bootstrap}, GuardMetrics())
    reloads: list[bool] = []
    state.on_reload = reloads.append
    state.load(lambda: False, lambda: None)
    try:
        before = state.consent.get(b"account:sr-000")
        assert before is not None and before.interest_based_ads == "granted"

        brokers[0].stop()
        brokers.append(EmbeddedBroker.start(port, log_path=tmp_path / "tansu-2.log"))
        ensure_topics({"bootstrap.servers": bootstrap}, [], STATE_TOPICS, 2)
        produce(
            bootstrap, "privacy.consent", [consent("sr-000", "denied", updated_at="2026-11-01T00:00:00Z")]
        )

        deadline = time.monotonic() + 90  # hang guard: the clients reconnect with backoff
        while True:
            state.catch_up_before_batch(time.monotonic())
            after = state.consent.get(b"account:sr-000")
            if after is not None and after.interest_based_ads == "denied":
                break
            assert time.monotonic() < deadline, f"the recreated topic's denial never applied: {after}"
            time.sleep(0.5)
        assert state.consent.get(b"account:sr-001") is None  # its grant lived on the old topic only
        assert reloads == [False, True]  # not ready while read again
    finally:
        state.close()
