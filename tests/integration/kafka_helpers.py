"""Helpers for integration tests: the tests' keys and rules on top of `streams.harness`, and the
consumer group's committed offsets (how a test knows a guard is done with its input)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from streams import harness
from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import TrafficGenerator
from streams.harness import GuardProcess, read_topic
from streams.harness import produce_records as produce
from streams.runtime.formats.records import partner_views
from streams.runtime.kafka.topics import ensure_topics

__all__ = [
    "KEY_ENV",
    "PARTNERS",
    "ROOT",
    "GuardProcess",
    "committed_offsets",
    "produce",
    "read_blocked",
    "read_jsonl",
    "read_topic",
    "run_cli",
    "seed_population",
    "start_guard",
    "wait_all_committed",
]

ROOT = Path(__file__).resolve().parents[2]
PARTNERS = ("install-attribution", "signup-conversions")
KEY_ENV = {
    "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "integration-key-install-0001",
    "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "integration-key-signup-00001",
}


def seed_population(bootstrap: str, input_topic: str, population: int, seed: int) -> TrafficGenerator:
    """Create the input and state topics and seed consent and sign-up status for a population."""
    ensure_topics(
        {"bootstrap.servers": bootstrap}, [input_topic], ["privacy.consent", "member.signup-status"], 3
    )
    generator = TrafficGenerator(seed=seed, population=population)
    produce(bootstrap, "privacy.consent", generator.consent_records())
    produce(bootstrap, "member.signup-status", generator.signup_statuses())
    return generator


def read_blocked(bootstrap: str, topic: str = "guard.blocked") -> list[dict[str, Any]]:
    """Every blocked record as one view per (input, partner), whichever format was written."""
    return [
        view
        for _, value, _ in read_topic(bootstrap, topic)
        for view in partner_views(orjson.loads(value or b""))
    ]


def start_guard(
    bootstrap: str,
    tmp: Path,
    input_topics: str,
    group: str,
    extra_env: dict[str, str] | None = None,
    transactional_id: str | None = None,
    engine: str = "kafka",
) -> GuardProcess:
    """Start `partner-guard run --create-topics` against the broker, with the tests' keys and rules.

    `engine="faust"` starts the Faust engine, which runs at least once here (the embedded
    broker refuses aiokafka's transactions): promise P8's gap is acknowledged for it.
    """
    env = {
        **KEY_ENV,
        "PARTNER_GUARD_GROUP_ID": group,
        "PARTNER_GUARD_BATCH_TIMEOUT_MS": "50",
        "PARTNER_GUARD_RULES_DIR": str(ROOT / "rules"),
        **(extra_env or {}),
    }
    if transactional_id:
        env["PARTNER_GUARD_TRANSACTIONAL_ID"] = transactional_id
    env["PARTNER_GUARD_ENGINE"] = engine
    if engine == "faust":
        env.setdefault("PARTNER_GUARD_FAUST_ACCEPTED_GAPS", "P8")
    return harness.start_guard(
        bootstrap, input_topics, tmp / f"guard-{uuid.uuid4().hex[:8]}.log", env, cwd=ROOT
    )


def _offsets_consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """Partition ids of a topic."""
    consumer = _offsets_consumer(bootstrap, f"meta-{uuid.uuid4().hex}")
    try:
        return sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (0 where nothing was committed)."""
    partitions = partitions_of(bootstrap, topic)
    consumer = _offsets_consumer(bootstrap, group)
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in found}
    finally:
        consumer.close()


def wait_all_committed(
    bootstrap: str,
    group: str,
    topic: str,
    total: int,
    timeout_s: float = 240.0,
    guards: Iterable[GuardProcess] = (),
) -> None:
    """Block until the group's committed offsets add up to `total` (the records produced).

    (Not the watermarks: the embedded broker's high watermark is the base offset of the last
    record batch + 1, short of the true end.)
    """
    deadline, watched = time.monotonic() + timeout_s, list(guards)
    while time.monotonic() < deadline:
        if sum(committed_offsets(bootstrap, group, topic).values()) >= total:
            return
        for guard in watched:
            if guard.process.poll() is not None:
                raise AssertionError(f"guard exited with {guard.process.returncode}: {guard.log()}")
        time.sleep(0.25)
    raise AssertionError(f"committed {committed_offsets(bootstrap, group, topic)}, expected {total} in all")


def run_cli(
    broker: EmbeddedBroker | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m streams ARGS` with the tests' keys (and the broker's bootstrap, if any)."""
    full_env = {**os.environ, **KEY_ENV, "COLUMNS": "200", **(env or {})}
    if broker is not None:
        full_env["PARTNER_GUARD_BOOTSTRAP_SERVERS"] = broker.bootstrap
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
