"""One batch's Kafka transaction: begin → produce → send offsets → commit, or abort and rewind.

`BatchTransaction` owns the whole lifecycle of the transaction that makes consume-decide-
produce exactly-once (P8), the way Quix Streams' `Checkpoint` and Kafka Streams'
`StreamTask` do. The job only feeds it: `begin()`, then for every input `consumed()` and
`produce()`, then `commit()`, which answers `COMMITTED` or `ABORTED` (the consumer has
already been rewound to the first offset of the batch on every partition it still owns,
so the next `consume()` decides the same records again). `start_commit()` runs the same
commit on the transaction's one committer thread and returns a `CommitInFlight` at once, so
the job can fetch and decide the next batch meanwhile; its `wait()` gives the outcome (and
on `ABORTED` also rewinds the partitions of a batch fetched since). A fatal error raises
`TransactionFatalError`: the producer is unusable (fenced, or the broker refused the
transaction for good), the process must stop and a supervisor restart it; the transactional
id fences this instance's zombie.

Error handling follows librdkafka's transactional API:

- retriable (`KafkaError.retriable()`): the same call is retried, at most
  `RetryPolicy.attempts` times and never past `RetryPolicy.deadline_s` by the injected
  clock; when the budget is spent the transaction is aborted and the batch rewound;
- abortable (`txn_requires_abort()`): abort, rewind, replay the batch;
- anything else (`fatal()`, or an abort that fails itself): `TransactionFatalError`;
- a call that never returns (librdkafka can block in `send_offsets_to_transaction` past its
  own timeout, confluentinc/librdkafka#5456): a `CallWatchdog` notices the call outlived its
  timeout by `HANG_GRACE_S` and ends the process with exit code `EXIT_TRANSACTION_HUNG` (4).
  The blocked call cannot be interrupted, and the producer it blocks cannot be closed or
  reused while it does, so recovering in-process would mean abandoning a live librdkafka
  handle (its threads and sockets) at every hang. A restart is clean: the new instance's
  `init_transactions` under the same transactional id aborts the open transaction, and the
  consumer group hands the batch's partitions back from their committed offsets.

`start_transactions` runs that `init_transactions` the same way: watched (a hung init exits
4 like any other hung call, at the first start as after a restart), retriable errors retried
within the retry policy (the coordinator may still be aborting the previous instance's
transaction), anything else, or a spent budget, `TransactionFatalError` (exit 3).

Liveness. Every watched call first calls `beat` (the job's `/healthz` heartbeat): a commit
retried within its budget is progress, not a stuck loop. The silence between two beats is
then at most one call, which librdkafka bounds by `call_timeout_s` and the watchdog by
`call_timeout_s + hang_grace_s`; `liveness_limit_s` keeps `/healthz` patient for longer
than that, so a hung call is always reported by the watchdog (exit 4, naming the call),
never by an anonymous liveness kill. The retry budget itself is the transaction's own
timeout (`transaction.timeout.ms`, librdkafka's default 60 s), counted from `begin()`: past
it the coordinator aborts the transaction anyway, so retrying longer would be futile.

A rebalance runs inside `consume()`: between transactions, or while a commit is in flight,
when the job's revoke callback first waits for it (`CommitInFlight.join`), so it never revokes
a partition under an open transaction; but the consumer group generation can still move on
while a batch is decided, and then `send_offsets_to_transaction` fails abortably. The rewind seeks
only the partitions still assigned: a revoked partition is re-read by its new owner from
the last committed offset.

The clock is passed in (monotonic seconds) so the retry budget is testable without sleeping.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection, Mapping
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from streams.runtime.kafka.calls import (
    Beat,
    CallWatchdog,
    Clock,
    GroupConsumer,
    PartitionKey,
    RetryBudgetSpentError,
    RetryPolicy,
    TransactionalProducer,
    TransactionFatalError,
    WatchedCalls,
    describe_error,
    kafka_error,
    no_beat,
)
from streams.runtime.kafka.io import Headers

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How a batch's transaction ended."""

    COMMITTED = "committed"
    ABORTED = "aborted"


class State(enum.Enum):
    """Where the transaction is in its lifecycle; illegal transitions raise."""

    IDLE = "idle"
    OPEN = "open"
    COMMITTING = "committing"  # the commit runs on the committer thread; nothing may begin
    FAILED = "failed"


class BatchOffsets:
    """The input offsets of one batch: where each partition starts (the rewind target) and
    the next offset to read (what the commit stores)."""

    def __init__(self) -> None:
        self.first: dict[PartitionKey, int] = {}
        self.next: dict[PartitionKey, int] = {}

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Note one input record."""
        self.first.setdefault((topic, partition), offset)
        self.next[(topic, partition)] = offset + 1

    def committable(self) -> list[TopicPartition]:
        """The next offset to read on every partition of the batch."""
        return [TopicPartition(t, p, o) for (t, p), o in self.next.items()]


class CommitInFlight:
    """One batch's send-offsets and commit (or abort), running on the committer thread.

    `wait()` (the loop's thread) takes its outcome and, when it aborted, rewinds the consumer;
    `join()` only waits for it to end (a rebalance callback: no transaction spans a revoke).
    """

    def __init__(
        self, transaction: BatchTransaction, outcome: Future[Outcome], first: dict[PartitionKey, int]
    ):
        self._transaction = transaction
        self._outcome = outcome
        self._first = first

    def done(self) -> bool:
        """True once the commit (or its abort) has ended, however."""
        return self._outcome.done()

    def join(self) -> None:
        """Wait until the commit has ended, leaving its outcome (or error) to `wait()`."""
        futures.wait([self._outcome])

    def wait(
        self,
        next_first: Mapping[PartitionKey, int] | None = None,
        revoked: Collection[PartitionKey] = (),
    ) -> Outcome:
        """The commit's outcome; raises `TransactionFatalError` when it failed for good.

        On `ABORTED` the consumer is rewound to this batch's first offsets and, for partitions
        only in it, to `next_first`: the first offsets of a batch fetched since (its records are
        discarded by the caller, so they must be read again too). A partition in `revoked` (given
        up while this commit ran) may have been processed by another member and given back
        since: this batch's offset there is no longer ours to return to, so it is rewound to
        `next_first` when the next batch read it again, and otherwise left where the group's
        committed offset puts it.
        """
        try:
            outcome = self._outcome.result()
        except TransactionFatalError:
            self._transaction.state = State.FAILED
            raise
        if outcome is Outcome.ABORTED:
            ours = {key: offset for key, offset in self._first.items() if key not in revoked}
            self._transaction.rewind({**(next_first or {}), **ours})
        self._transaction.state = State.IDLE
        return outcome


class BatchTransaction:
    """The transaction of one batch, reused batch after batch by one job.

    The commit runs on one committer thread that this object owns (`start_commit`), so the loop
    can fetch and decide the next batch meanwhile: librdkafka's transactional calls release the
    GIL while they wait for the broker. Every call on the consumer stays on the caller's thread.
    """

    def __init__(
        self,
        producer: TransactionalProducer,
        consumer: GroupConsumer,
        clock: Clock = time.monotonic,
        retry: RetryPolicy = RetryPolicy(),
        watchdog: CallWatchdog | None = None,
        beat: Beat = no_beat,
    ) -> None:
        """`beat`: the job's heartbeat, called before every transactional call (see Liveness)."""
        self.producer = producer
        self.consumer = consumer
        self.clock = clock
        self.retry = retry
        self.watchdog = watchdog or CallWatchdog()
        self._calls = WatchedCalls(self.watchdog, retry, clock, beat)
        self.state = State.IDLE
        self._offsets = BatchOffsets()
        self._began = 0.0
        self.produced = 0
        self._committer: ThreadPoolExecutor | None = None

    def begin(self, offsets: BatchOffsets | None = None) -> None:
        """Open the transaction of a new batch; `offsets`: its inputs, when noted beforehand."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"begin() while the transaction is {self.state.value}")
        self._offsets = offsets if offsets is not None else BatchOffsets()
        self.produced = 0
        self._began = self.clock()
        try:
            with self._calls.watched("begin"):
                self.producer.begin_transaction()
        except KafkaException as exc:
            self.state = State.FAILED
            raise TransactionFatalError(f"cannot begin a transaction: {describe_error(exc)}") from exc
        self.state = State.OPEN

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Note one input record: its offset is committed with the batch, or rewound to."""
        self._offsets.consumed(topic, partition, offset)

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        """Produce one output record inside the transaction (waits for queue space).

        librdkafka frees queue space at the latest when queued records time out, which for a
        transactional producer is the transaction timeout (`retry.deadline_s`): the wait beats
        like a retry, and one that outlasts that by the grace is hung (exit 4).
        """
        if self.state is not State.OPEN:
            raise RuntimeError(f"produce() while the transaction is {self.state.value}")
        try:
            self.producer.produce(topic, value, key, headers=headers)
        except BufferError:
            self._wait_for_queue_space(lambda: self.producer.produce(topic, value, key, headers=headers))
        self.produced += 1

    def _wait_for_queue_space(self, produce: Callable[[], None]) -> None:
        limit = self.retry.deadline_s + self.retry.hang_grace_s
        with self.watchdog.watch("produce: queue full", limit):
            while True:
                self._calls.beat()
                self.producer.poll(0.05)
                try:
                    produce()
                    return
                except BufferError:
                    continue

    def commit(self) -> Outcome:
        """Commit the open transaction and wait for it (`start_commit().wait()`)."""
        return self.start_commit().wait()

    def start_commit(self, then: Callable[[Outcome], None] | None = None) -> CommitInFlight:
        """Start committing the open transaction on the committer thread; returns at once.

        Until the handle's `wait()` the transaction is `COMMITTING`: nothing may begin. `then`
        runs on the committer thread as soon as the transaction committed or aborted (not when
        it failed for good): the job counts a batch's metrics there, the moment it committed.
        """
        if self.state is not State.OPEN:
            raise RuntimeError(f"commit() while the transaction is {self.state.value}")
        offsets, first = self._offsets.committable(), dict(self._offsets.first)
        group = self.consumer.consumer_group_metadata() if offsets else None  # the caller's thread
        self.state = State.COMMITTING
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="txn-commit")

        def run() -> Outcome:
            outcome = self._send_and_commit(offsets, group)
            if then is not None:
                then(outcome)
            return outcome

        return CommitInFlight(self, self._committer.submit(run), first)

    def _send_and_commit(self, offsets: list[TopicPartition], group: Any) -> Outcome:
        """Send the offsets and commit; on an abortable or exhausted error, abort (committer thread).

        Step 1: send the input offsets into the transaction (skipped when nothing was consumed).
        Step 2: commit the transaction, retrying retriable errors within the retry policy (its
        deadline counts from `begin()`, like the coordinator's transaction timeout).
        Step 3 (only on failure): abort the transaction; `CommitInFlight.wait` rewinds.
        """
        deadline, timeout = self._began + self.retry.deadline_s, self.retry.call_timeout_s
        try:
            if offsets:  # Step 1
                self._calls.with_retry(
                    "send offsets",
                    deadline,
                    lambda: self.producer.send_offsets_to_transaction(offsets, group, timeout),
                )
            self._calls.with_retry(  # Step 2
                "commit", deadline, lambda: self.producer.commit_transaction(timeout)
            )
        except RetryBudgetSpentError as exc:
            log.warning("giving up on the transaction after retries: %s", exc)
            return self._abort()  # Step 3
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.txn_requires_abort() and not error.fatal():
                log.warning("aborting the transaction and replaying the batch: %s", error.str())
                return self._abort()  # Step 3
            raise TransactionFatalError(f"transaction failed: {describe_error(exc)}") from exc
        return Outcome.COMMITTED

    def _abort(self) -> Outcome:
        try:
            with self._calls.watched("abort"):
                self.producer.abort_transaction(self.retry.call_timeout_s)
        except KafkaException as exc:
            raise TransactionFatalError(f"abort failed: {describe_error(exc)}") from exc
        return Outcome.ABORTED

    def rewind(self, first: Mapping[PartitionKey, int]) -> None:
        """Seek every partition in `first` that is still assigned back to its offset there."""
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in owned:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            else:
                log.info("not rewinding %s[%d]: revoked; its new owner re-reads it", topic, partition)

    def close(self) -> None:
        """Stop the committer thread (after the last commit was waited for)."""
        if self._committer is not None:
            self._committer.shutdown(wait=False)
            self._committer = None
