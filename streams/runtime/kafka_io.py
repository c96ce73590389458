"""Small Kafka helpers shared by the job, the demo, the tests and the benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from confluent_kafka import KafkaError, Message, Producer

Headers = list[tuple[str, str | bytes | None]]
MessageT = TypeVar("MessageT")


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


def next_batch(consumer: BatchConsumer[MessageT], batch_size: int, wait_s: float) -> list[MessageT]:
    """The next batch: every message already buffered, up to `batch_size`, without waiting.

    Only an empty buffer is waited on, for at most `wait_s`, and only until the first message
    arrives; then whatever else is buffered by that moment joins it. librdkafka's own
    `consume(n, timeout)` waits the whole timeout unless `n` messages arrive, which added that
    timeout to every record's latency whenever the input ran below `batch_size` per timeout.
    The batch size adapts to the load by itself: the records that arrive while one batch is
    decided and committed make up the next one.
    """
    buffered = consumer.consume(batch_size, 0)
    if buffered:
        return buffered
    first = consumer.consume(1, wait_s)
    if not first or batch_size == 1:
        return first
    return first + consumer.consume(batch_size - 1, 0)
