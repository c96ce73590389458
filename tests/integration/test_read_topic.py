"""`harness.read_topic` ends at the end offsets listed when it is called, not after a silence:
it still returns every committed record (the whole last record batch, whose base offset + 1
is all the embedded broker lists), steps over transaction markers, and leaves a transaction
still open out until it commits.

The reads here pass an infinite `idle_s`: the old read, which only ended after `idle_s`
without a new record, would never return (pytest-timeout fails it)."""

from __future__ import annotations

import math
import uuid

import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.harness import end_offsets, new_producer, read_topic
from streams.runtime.kafka.topics import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PARTITIONS = 3


def _topic(bootstrap: str) -> str:
    name = f"read-topic-{uuid.uuid4().hex[:8]}"
    ensure_topics({"bootstrap.servers": bootstrap}, [name], [], PARTITIONS)
    return name


def _produce(producer: Producer, topic: str, count: int, tag: str) -> None:
    for i in range(count):
        producer.produce(topic, f"{tag}-{i}".encode(), key=f"{tag}-{i}".encode())
    producer.flush(30)


def _values(bootstrap: str, topic: str, idle_s: float = math.inf) -> list[str]:
    return sorted((r.value or b"").decode() for r in read_topic(bootstrap, topic, idle_s=idle_s))


def test_reads_every_record_of_the_last_batch_and_ends_without_waiting_for_silence(
    session_broker: EmbeddedBroker,
) -> None:
    bootstrap = session_broker.bootstrap
    topic = _topic(bootstrap)
    producer = new_producer(bootstrap, **{"linger.ms": 200})  # one large batch per partition
    _produce(producer, topic, 3000, "a")
    ends = end_offsets(bootstrap, topic, range(PARTITIONS))
    print(f"\nlisted end offsets of 3,000 records in one batch per partition: {ends}")
    assert _values(bootstrap, topic) == sorted(f"a-{i}" for i in range(3000))
    assert read_topic(bootstrap, _topic(bootstrap), idle_s=math.inf) == []  # empty partitions: done


def test_committed_transactions_are_read_and_an_open_one_is_waited_for_until_idle(
    session_broker: EmbeddedBroker,
) -> None:
    bootstrap = session_broker.bootstrap
    topic = _topic(bootstrap)
    _produce(new_producer(bootstrap), topic, 500, "plain")
    transactional = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    _produce(transactional, topic, 400, "committed")
    transactional.commit_transaction(30)  # the marker is each partition's last record
    committed = sorted([*(f"plain-{i}" for i in range(500)), *(f"committed-{i}" for i in range(400))])
    assert _values(bootstrap, topic) == committed

    transactional.begin_transaction()
    _produce(transactional, topic, 300, "open")
    assert _values(bootstrap, topic, idle_s=1.0) == committed  # read_committed: not the open ones
    transactional.commit_transaction(30)
    assert _values(bootstrap, topic) == sorted([*committed, *(f"open-{i}" for i in range(300))])
