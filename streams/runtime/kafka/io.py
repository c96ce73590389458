"""Small Kafka helpers shared by the job, the demo, the tests and the benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

Headers = list[tuple[str, str | bytes | None]]
MessageT = TypeVar("MessageT")
MessageIn = TypeVar("MessageIn", contravariant=True)


class BatchConsumer(Protocol[MessageT]):
    """The part of `confluent_kafka.Consumer` that collecting a batch uses."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[MessageT]: ...


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
) -> None:
    """Produce one record, waiting for queue space instead of failing when the queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def records_in(
    messages: Iterable[Message], log: logging.Logger, what: str
) -> Iterator[tuple[Message, str, int, int]]:
    """The messages that carry a record, each with its topic, partition and offset.

    Error events are skipped; all but end-of-partition are logged as `<what> error: ...`
    (librdkafka's text: never a payload).
    """
    for message in messages:
        error = message.error()
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if error is not None or topic is None or partition is None or offset is None:
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                log.warning("%s error: %s", what, error.str())
            continue
        yield message, topic, partition, offset


class RevokedDuringBatch(Protocol[MessageIn]):
    """What `next_batch` asks about rebalances while it collects a batch."""

    def start(self) -> None:
        """Forget revocations so far."""

    def revoked(self, message: MessageIn) -> bool:
        """True when the message's partition was revoked since `start()`."""


class Revocations:
    """Partitions revoked by the consumer's rebalance callback since `start()`."""

    def __init__(self) -> None:
        self._partitions: set[tuple[str, int]] = set()

    def add(self, partitions: Iterable[TopicPartition]) -> None:
        """Called from the rebalance callback with the partitions revoked (or lost)."""
        self._partitions.update((tp.topic, tp.partition) for tp in partitions)

    def start(self) -> None:
        """Forget revocations so far."""
        self._partitions.clear()

    def revoked(self, message: Message) -> bool:
        """True when the message's partition was revoked since `start()`."""
        return (message.topic(), message.partition()) in self._partitions


def next_batch(
    consumer: BatchConsumer[MessageT],
    batch_size: int,
    wait_s: float,
    revocations: RevokedDuringBatch[MessageT] | None = None,
) -> list[MessageT]:
    """The next batch: every message already buffered, up to `batch_size`, without waiting.

    Only an empty buffer is waited on, for at most `wait_s`, and only until the first message
    arrives; then whatever else is buffered by that moment joins it. librdkafka's own
    `consume(n, timeout)` waits the whole timeout unless `n` messages arrive, which added that
    timeout to every record's latency whenever the input ran below `batch_size` per timeout.
    The batch size adapts to the load by itself: the records that arrive while one batch is
    decided and committed make up the next one.

    A rebalance can run inside the second `consume` call. librdkafka drops the revoked
    partitions' messages from that call's answer, not the first message already taken: when
    its partition was revoked meanwhile it is dropped too (never decided, its offset never
    committed; whoever owns the partition now, or this instance after a reassignment, reads
    it again from the committed offset).
    """
    buffered = consumer.consume(batch_size, 0)
    if buffered:
        return buffered
    first = consumer.consume(1, wait_s)
    if not first or batch_size == 1:
        return first
    if revocations is not None:
        revocations.start()
    more = consumer.consume(batch_size - 1, 0)
    if revocations is not None:
        first = [message for message in first if not revocations.revoked(message)]
    return first + more
