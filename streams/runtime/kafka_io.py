"""Small Kafka helpers shared by the job, the demo, the tests and the benchmarks."""

from __future__ import annotations

from confluent_kafka import Producer

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
