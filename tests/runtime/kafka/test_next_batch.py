"""Collecting a batch (`kafka_io.next_batch`) against a fake consumer with a fake clock (no broker,
no sleeping): a batch closes as soon as the buffer is drained, never waiting out its timeout."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.runtime.kafka.io import next_batch


@dataclass
class FakeConsumer:
    """librdkafka's `consume(n, timeout)` semantics over a scripted buffer and a fake clock.

    `consume` returns at once with `n` messages when that many are buffered; otherwise it waits
    the whole timeout (the clock advances by it) and returns what arrived meanwhile, up to `n`.
    `arrivals` are (fake time, message) pairs delivered into the buffer as the clock passes them.
    """

    buffered: list[str] = field(default_factory=list)
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    now: float = 0.0
    calls: list[tuple[int, float]] = field(default_factory=list)

    def _deliver_until(self, until: float) -> None:
        while self.arrivals and self.arrivals[0][0] <= until:
            at, message = self.arrivals.pop(0)
            self.now = max(self.now, at)
            self.buffered.append(message)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[str]:
        self.calls.append((num_messages, timeout))
        self._deliver_until(self.now)
        deadline = self.now + timeout
        while len(self.buffered) < num_messages and self.arrivals and self.arrivals[0][0] <= deadline:
            self._deliver_until(self.arrivals[0][0])
        if len(self.buffered) < num_messages:
            self.now = deadline  # fewer than asked for: librdkafka waits the whole timeout
        taken, self.buffered = self.buffered[:num_messages], self.buffered[num_messages:]
        return taken  # strings stand in for messages


def test_a_batch_closes_at_once_when_the_buffer_is_drained() -> None:
    consumer = FakeConsumer(buffered=["a", "b", "c"])
    batch = next_batch(consumer, batch_size=2000, wait_s=0.025)
    assert batch == ["a", "b", "c"]
    assert consumer.now == 0.0  # no wait for a batch that cannot fill


def test_an_empty_buffer_waits_only_until_the_first_record_then_takes_what_is_buffered() -> None:
    consumer = FakeConsumer(arrivals=[(0.004, "a"), (0.004, "b"), (0.020, "late")])
    batch = next_batch(consumer, batch_size=2000, wait_s=0.025)
    assert batch == ["a", "b"]
    assert consumer.now == 0.004  # closed when "a" and "b" arrived, not at the 25 ms timeout
    assert next_batch(consumer, batch_size=2000, wait_s=0.025) == ["late"]


def test_batch_size_still_bounds_a_batch() -> None:
    consumer = FakeConsumer(buffered=[str(i) for i in range(5)])
    assert next_batch(consumer, batch_size=2, wait_s=0.025) == ["0", "1"]
    assert next_batch(consumer, batch_size=2, wait_s=0.025) == ["2", "3"]
    consumer.arrivals = [(0.001, "x"), (0.001, "y")]
    assert next_batch(consumer, batch_size=1, wait_s=0.025) == ["4"]
    assert next_batch(consumer, batch_size=1, wait_s=0.025) == ["x"]


def test_nothing_arriving_waits_at_most_the_timeout_and_returns_an_empty_batch() -> None:
    consumer = FakeConsumer()
    assert next_batch(consumer, batch_size=2000, wait_s=0.025) == []
    assert consumer.now == 0.025


def test_the_old_single_consume_call_would_have_waited_the_timeout() -> None:
    """The fake reproduces what the loop used to pay: `consume(batch_size, timeout)` below
    `batch_size` records waits the whole timeout (so the tests above prove the change)."""
    consumer = FakeConsumer(buffered=["a", "b", "c"])
    assert consumer.consume(2000, 0.025) == ["a", "b", "c"]
    assert consumer.now == 0.025


@dataclass(frozen=True)
class Record:
    """A message on a partition of topic "in"."""

    partition: int
    offset: int


@dataclass
class Revoked:
    """The job's revocation record, for fake messages."""

    partitions: set[int] = field(default_factory=set)

    def start(self) -> None:
        self.partitions.clear()

    def revoked(self, message: Record) -> bool:
        return message.partition in self.partitions


@dataclass
class RebalancingConsumer:
    """An empty buffer, then one record of partition 0; the next call serves a rebalance that
    revokes `revoke` (librdkafka drops that call's own outdated messages) and returns `after`."""

    revocations: Revoked
    revoke: set[int]
    after: list[Record]
    calls: int = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Record]:
        self.calls += 1
        if self.calls == 1:
            return []
        if self.calls == 2:
            return [Record(0, 41)]
        self.revocations.partitions |= self.revoke  # the job's on_revoke, inside consume()
        return self.after


def test_a_record_held_across_a_rebalance_that_revoked_its_partition_is_dropped() -> None:
    revocations = Revoked({0})  # a revocation before the batch started does not count
    consumer = RebalancingConsumer(revocations, revoke={0}, after=[Record(1, 7)])
    assert next_batch(consumer, batch_size=2000, wait_s=0.025, revocations=revocations) == [Record(1, 7)]


def test_a_revocation_of_another_partition_keeps_the_held_record() -> None:
    revocations = Revoked({0})
    consumer = RebalancingConsumer(revocations, revoke={1}, after=[Record(0, 42)])
    batch = next_batch(consumer, batch_size=2000, wait_s=0.025, revocations=revocations)
    assert batch == [Record(0, 41), Record(0, 42)]  # dropping 41 would lose it (its position moved on)
