"""Small Kafka helpers shared by the job, the demo, the tests and the benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from confluent_kafka import KafkaError, Message, Producer

Headers = list[tuple[str, str | bytes | None]]


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
