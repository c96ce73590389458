"""The batch transaction's lifecycle against fake producers and consumers (no broker, no sleeping)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings
from streams.runtime.kafka.calls import (
    EXIT_TRANSACTION_HUNG,
    LIVENESS_FLOOR_S,
    RETRY_DEADLINE_S,
    CallWatchdog,
    RetryPolicy,
    TransactionFatalError,
    liveness_limit_s,
    start_transactions,
)
from streams.runtime.ops.metrics import Heartbeat
from streams.runtime.pipeline.transaction import BatchOffsets, BatchTransaction, Outcome, State


def retriable() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))


def abortable() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "abortable", txn_requires_abort=True))


def fatal() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


@dataclass
class FakeProducer:
    """Records the transactional calls; scripted failures are raised in order, per call."""

    failures: dict[str, list[KafkaException]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    produced: list[tuple[str, bytes | None]] = field(default_factory=list)
    sent_offsets: list[list[TopicPartition]] = field(default_factory=list)
    queue_full_times: int = 0
    on_call: Callable[[str], None] | None = None

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.on_call is not None:
            self.on_call(name)
        scripted = self.failures.get(name)
        if scripted:
            raise scripted.pop(0)

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, topic: str, value: Any = None, key: Any = None, *, headers: Any = None) -> None:
        if self.queue_full_times:
            self.queue_full_times -= 1
            raise BufferError("queue full")
        self.produced.append((topic, value))

    def poll(self, timeout: float = 0) -> int:
        self.calls.append("poll")
        return 0

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any, timeout: float = 0) -> None:
        self._call("send_offsets")
        self.sent_offsets.append(list(offsets))

    def commit_transaction(self, timeout: float = 0) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float = 0) -> None:
        self._call("abort")

    def init_transactions(self, timeout: float = 0) -> None:
        self._call("init")


@dataclass
class FakeConsumer:
    """An assignment and the seeks made on it."""

    assigned: list[tuple[str, int]] = field(default_factory=lambda: [("in", 0), ("in", 1)])
    seeks: list[tuple[str, int, int]] = field(default_factory=list)

    def consumer_group_metadata(self) -> object:
        return object()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def seek(self, partition: TopicPartition) -> None:
        assert (partition.topic, partition.partition) in self.assigned, "seek on an unassigned partition"
        self.seeks.append((partition.topic, partition.partition, partition.offset))


class FakeClock:
    """Monotonic seconds that advance only when a test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _make(
    failures: dict[str, list[KafkaException]] | None = None, retry: RetryPolicy = RetryPolicy()
) -> tuple[BatchTransaction, FakeProducer, FakeConsumer, FakeClock]:
    producer, consumer, clock = FakeProducer(failures or {}), FakeConsumer(), FakeClock()
    return BatchTransaction(producer, consumer, clock, retry), producer, consumer, clock


def _consume_batch(transaction: BatchTransaction) -> None:
    transaction.begin()
    for partition, offset in ((0, 10), (0, 11), (0, 12), (1, 7)):
        transaction.consumed("in", partition, offset)
    transaction.produce("out", b"a")
    transaction.produce("guard.blocked", b"b")


def test_commit_sends_the_next_offset_of_every_partition_then_commits() -> None:
    transaction, producer, consumer, _ = _make()
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.COMMITTED
    assert producer.calls == ["begin", "send_offsets", "commit"]
    assert [(tp.topic, tp.partition, tp.offset) for tp in producer.sent_offsets[0]] == [
        ("in", 0, 13),
        ("in", 1, 8),
    ]
    assert consumer.seeks == [] and transaction.state is State.IDLE


def test_a_batch_without_input_commits_without_sending_offsets() -> None:
    transaction, producer, _, _ = _make()
    transaction.begin()
    assert transaction.commit() is Outcome.COMMITTED
    assert producer.calls == ["begin", "commit"]


def test_a_retriable_commit_error_is_retried_and_then_commits() -> None:
    transaction, producer, consumer, _ = _make({"commit": [retriable(), retriable()]})
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.COMMITTED
    assert producer.calls == ["begin", "send_offsets", "commit", "commit", "commit"]
    assert consumer.seeks == []


def test_retries_are_bounded_by_attempts_then_the_batch_is_aborted_and_rewound() -> None:
    """Before: `_commit` retried a retriable error forever; now the budget ends in an abort."""
    transaction, producer, consumer, _ = _make({"commit": [retriable()] * 50}, RetryPolicy(attempts=3))
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.ABORTED
    assert producer.calls == ["begin", "send_offsets", "commit", "commit", "commit", "abort"]
    assert sorted(consumer.seeks) == [("in", 0, 10), ("in", 1, 7)]
    assert transaction.state is State.IDLE


def test_retries_are_bounded_by_the_injected_clock() -> None:
    transaction, producer, _, clock = _make(
        {"commit": [retriable()] * 50}, RetryPolicy(attempts=1000, deadline_s=60)
    )

    def advance(name: str) -> None:
        if name == "commit":
            clock.now += 25  # each timed-out commit call "takes" 25 s

    producer.on_call = advance
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.ABORTED
    assert producer.calls.count("commit") == 3  # 0 s, 25 s, 50 s; at 75 s the 60 s budget is spent
    assert producer.calls[-1] == "abort"


def test_an_abortable_error_aborts_and_rewinds_to_the_first_offset_of_each_partition() -> None:
    transaction, producer, consumer, _ = _make({"commit": [abortable()]})
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.ABORTED
    assert producer.calls == ["begin", "send_offsets", "commit", "abort"]
    assert sorted(consumer.seeks) == [("in", 0, 10), ("in", 1, 7)]


def test_the_next_batch_after_an_abort_starts_a_fresh_transaction() -> None:
    transaction, producer, _, _ = _make({"send_offsets": [abortable()]})
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.ABORTED
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.COMMITTED
    assert producer.calls[-3:] == ["begin", "send_offsets", "commit"]


@pytest.mark.parametrize("step", ["send_offsets", "commit"])
def test_a_fatal_error_raises_and_leaves_the_transaction_unusable(step: str) -> None:
    transaction, producer, consumer, _ = _make({step: [fatal()]})
    _consume_batch(transaction)
    with pytest.raises(TransactionFatalError, match="fenced"):
        transaction.commit()
    assert "abort" not in producer.calls and consumer.seeks == []
    assert transaction.state is State.FAILED
    with pytest.raises(RuntimeError):
        transaction.begin()


def test_an_abort_that_fails_is_fatal() -> None:
    transaction, _, _, _ = _make({"commit": [abortable()], "abort": [retriable()]})
    _consume_batch(transaction)
    with pytest.raises(TransactionFatalError, match="abort failed"):
        transaction.commit()


def test_a_begin_that_fails_is_fatal() -> None:
    transaction, _, _, _ = _make({"begin": [fatal()]})
    with pytest.raises(TransactionFatalError):
        transaction.begin()


def test_rebalance_mid_batch_rewinds_only_partitions_still_assigned() -> None:
    """Partition 1 is revoked while the batch is decided; the group generation moved on, so
    sending offsets fails abortably. Its new owner re-reads it; this instance must not seek it."""
    transaction, _, consumer, _ = _make(
        {
            "send_offsets": [
                KafkaException(
                    KafkaError(KafkaError.ILLEGAL_GENERATION, "generation", txn_requires_abort=True)
                )
            ]
        }
    )
    _consume_batch(transaction)
    consumer.assigned = [("in", 0)]
    assert transaction.commit() is Outcome.ABORTED
    assert consumer.seeks == [("in", 0, 10)]


def test_produce_waits_for_queue_space_instead_of_failing() -> None:
    transaction, producer, _, _ = _make()
    producer.queue_full_times = 2
    transaction.begin()
    transaction.produce("out", b"x")
    assert producer.produced == [("out", b"x")] and producer.calls.count("poll") == 2
    assert transaction.produced == 1


def test_illegal_transitions_are_refused() -> None:
    transaction, _, _, _ = _make()
    with pytest.raises(RuntimeError):
        transaction.produce("out", b"x")
    with pytest.raises(RuntimeError):
        transaction.commit()
    transaction.begin()
    with pytest.raises(RuntimeError):
        transaction.begin()


class BlockingSendOffsets(FakeProducer):
    """A producer whose send offsets blocks until released, like librdkafka#5456."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any, timeout: float = 0) -> None:
        self._call("send_offsets")
        assert self.release.wait(60), "the watchdog never fired"


def test_a_transactional_call_that_never_returns_is_reported_as_hung() -> None:
    """Before: a blocked send offsets stalled the loop until /healthz (60 s) got it killed."""
    producer, hung = BlockingSendOffsets(), []

    def on_hang(step: str, waited_s: float) -> None:
        hung.append((step, waited_s))
        producer.release.set()  # the real handler ends the process here

    watchdog = CallWatchdog(on_hang)
    policy = RetryPolicy(call_timeout_s=0.01, hang_grace_s=0.01)
    transaction = BatchTransaction(producer, FakeConsumer(), FakeClock(), policy, watchdog)
    _consume_batch(transaction)
    transaction.commit()
    assert [step for step, _ in hung] == ["send offsets"]
    assert hung[0][1] >= 0.02


def test_calls_that_return_in_time_never_fire_the_watchdog() -> None:
    hung: list[str] = []
    watchdog = CallWatchdog(lambda step, _: hung.append(step))
    transaction = BatchTransaction(FakeProducer(), FakeConsumer(), FakeClock(), RetryPolicy(), watchdog)
    for _ in range(200):
        _consume_batch(transaction)
        assert transaction.commit() is Outcome.COMMITTED
    with watchdog.watch("after", 0.0):  # a zero limit fires; proves the thread is alive and watching
        deadline = threading.Event()
        while not hung and not deadline.wait(0.01):
            pass
    assert hung == ["after"]


def test_the_hung_exit_code_is_distinct_from_the_fatal_one() -> None:
    assert EXIT_TRANSACTION_HUNG not in (0, 2, 3)


# -- init_transactions: watched and retried like the batch's calls ----------------------------


class BlockingInit(FakeProducer):
    """A producer whose init_transactions blocks until released (a hung start)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def init_transactions(self, timeout: float = 0) -> None:
        self._call("init")
        assert self.release.wait(60), "the watchdog never fired"


def test_an_init_transactions_that_never_returns_is_reported_as_hung() -> None:
    """Before: the job called init_transactions unwatched; a hung one stalled the start for good
    (no loop beat yet: only a liveness probe, if any, would have noticed)."""
    producer, hung = BlockingInit(), []

    def on_hang(step: str, waited_s: float) -> None:
        hung.append(step)
        producer.release.set()  # the real handler ends the process here (exit 4)

    policy = RetryPolicy(call_timeout_s=0.01, hang_grace_s=0.01)
    start_transactions(producer, policy, FakeClock(), CallWatchdog(on_hang))
    assert hung == ["init transactions"]


def test_a_timed_out_init_is_retried_and_beats_the_heartbeat_before_every_attempt() -> None:
    """A restart waits while the coordinator aborts the old instance's open transaction:
    librdkafka answers a retriable timeout, and init may be called again."""
    producer, beats = FakeProducer({"init": [retriable(), retriable()]}), []
    start_transactions(producer, RetryPolicy(), FakeClock(), beat=lambda: beats.append(1))
    assert producer.calls == ["init", "init", "init"] and len(beats) == 3


def test_an_init_that_keeps_timing_out_is_fatal_once_the_budget_is_spent() -> None:
    producer, clock = FakeProducer({"init": [retriable()] * 50}), FakeClock()

    def advance(name: str) -> None:
        clock.now += 30  # each attempt waits its whole call timeout

    producer.on_call = advance
    with pytest.raises(TransactionFatalError, match="cannot initialise transactions"):
        start_transactions(producer, RetryPolicy(attempts=1000, deadline_s=60), clock)
    assert producer.calls == ["init", "init"]  # 0 → 30 s, 30 → 60 s: the 60 s budget is spent


def test_a_fenced_init_is_fatal_at_once() -> None:
    producer = FakeProducer({"init": [fatal()]})
    with pytest.raises(TransactionFatalError, match="fenced"):
        start_transactions(producer, RetryPolicy(), FakeClock())
    assert producer.calls == ["init"]


# -- liveness: /healthz and the retry budget agree ---------------------------------------------


def test_healthz_stays_alive_through_a_bounded_retry_and_its_abort() -> None:
    """Before: the loop beat once a batch, so a commit retried for longer than 60 s (the retry
    deadline was 120 s) turned /healthz 503 and a liveness probe killed a job that was doing
    exactly what it should. Now each transactional call beats first."""
    retry = RetryPolicy()
    transaction, producer, _, clock = _make({"commit": [retriable()] * 50}, retry)
    heartbeat = Heartbeat(liveness_limit_s(retry), clock)
    transaction._calls.beat = heartbeat.beat
    alive_after_each_call: list[bool] = []

    def slow_call(name: str) -> None:
        if name in ("commit", "abort"):
            clock.now += retry.call_timeout_s - 5  # slow, but inside librdkafka's own timeout
            alive_after_each_call.append(heartbeat.alive())

    producer.on_call = slow_call
    _consume_batch(transaction)
    assert transaction.commit() is Outcome.ABORTED
    assert clock.now - 1000 > heartbeat.max_silence_s  # the whole retry outlasted the limit...
    assert alive_after_each_call == [True] * 4  # ...yet /healthz never went silent: 3 commits, abort


def test_the_liveness_limit_outlasts_the_longest_call_the_watchdog_allows() -> None:
    """A hung call must be reported by the watchdog (exit 4, naming the call), never by an
    anonymous liveness kill; a slow but bounded one by neither."""
    assert liveness_limit_s(RetryPolicy()) == LIVENESS_FLOOR_S == 60.0  # the documented default
    for call_timeout_s in (1.0, 30.0, 55.0, 120.0, 600.0):
        retry = RetryPolicy(call_timeout_s=call_timeout_s)
        assert liveness_limit_s(retry) > retry.hung_after_s > retry.call_timeout_s
    assert liveness_limit_s(RetryPolicy(), longest_unwatched_s=90.0) > 90.0  # a long state catch-up


def test_the_retry_deadline_is_the_transaction_timeout() -> None:
    assert RETRY_DEADLINE_S == 60.0  # librdkafka's default transaction.timeout.ms
    assert RetryPolicy.configured(30_000, {}) == RetryPolicy(deadline_s=60.0, call_timeout_s=30.0)
    configured = RetryPolicy.configured(5_000, {"transaction.timeout.ms": "90000"})
    assert configured.deadline_s == 90.0 and configured.call_timeout_s == 5.0


def test_the_retry_deadline_counts_from_begin_like_the_coordinator() -> None:
    """A batch that took 50 s to decide has 10 s of its 60 s transaction left: retrying past
    that is futile (the coordinator aborts it). Before: the budget restarted at commit()."""
    transaction, producer, _, clock = _make({"commit": [retriable()] * 50}, RetryPolicy(attempts=5))

    def slow_call(name: str) -> None:
        if name == "commit":
            clock.now += 20

    producer.on_call = slow_call
    _consume_batch(transaction)
    clock.now += 50  # deciding the batch
    assert transaction.commit() is Outcome.ABORTED
    assert producer.calls.count("commit") == 1


# -- the job's wiring ----------------------------------------------------------------------------


def test_the_jobs_healthz_limit_follows_its_call_timeout(ruleset: Ruleset) -> None:
    from streams.runtime.pipeline.job import GuardJob

    default = GuardJob(Settings(bootstrap_servers="127.0.0.1:1"), ruleset)
    assert default.heartbeat.max_silence_s == 60.0 and default.retry.deadline_s == 60.0
    slow = GuardJob(
        Settings(
            bootstrap_servers="127.0.0.1:1",
            transaction_call_timeout_ms=120_000,
            kafka={"transaction.timeout.ms": "300000"},
        ),
        ruleset,
    )
    assert slow.heartbeat.max_silence_s > slow.retry.hung_after_s == 130.0
    assert slow.retry.deadline_s == 300.0


class _HangingConsumer:
    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self) -> None:
        assert self.release.wait(60), "the watchdog never fired"


def test_a_consumer_close_that_never_returns_is_reported_as_hung(ruleset: Ruleset) -> None:
    """Before: the job's shutdown closed the consumer unwatched (leaving the group can hang,
    librdkafka#4527), after the loop stopped beating: a stop that never ended."""
    from streams.runtime.pipeline.job import GuardJob

    job, consumer, hung = GuardJob(Settings(bootstrap_servers="127.0.0.1:1"), ruleset), _HangingConsumer(), []

    def on_hang(step: str, waited_s: float) -> None:
        hung.append(step)
        consumer.release.set()

    job.retry = RetryPolicy(call_timeout_s=0.01, hang_grace_s=0.01)
    job.watchdog = CallWatchdog(on_hang)
    job._close(consumer, FakeFlushProducer())  # type: ignore[arg-type]
    assert hung == ["consumer close"]


class FakeFlushProducer:
    def flush(self, timeout: float = 0) -> int:
        return 0


class _AlwaysFull(FakeProducer):
    """A producer whose queue never frees up until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def produce(self, topic: str, value: Any = None, key: Any = None, *, headers: Any = None) -> None:
        if not self.release.is_set():
            raise BufferError("queue full")
        self.produced.append((topic, value))


def test_a_queue_that_never_frees_is_reported_as_hung_and_the_wait_beats() -> None:
    """Before: produce() polled for queue space forever, unwatched (only a liveness probe, 60 s
    later, could notice). librdkafka frees it by the transaction timeout at the latest."""
    producer, hung, beats = _AlwaysFull(), [], []

    def on_hang(step: str, waited_s: float) -> None:
        hung.append(step)
        producer.release.set()

    policy = RetryPolicy(deadline_s=0.01, hang_grace_s=0.01)
    transaction = BatchTransaction(
        producer, FakeConsumer(), FakeClock(), policy, CallWatchdog(on_hang), lambda: beats.append(1)
    )
    transaction.begin()
    transaction.produce("out", b"x")
    assert hung == ["produce: queue full"] and producer.produced == [("out", b"x")]
    assert len(beats) > 1 and transaction.produced == 1  # begin's beat, then one per wait


# -- the commit in flight: overlapped with the next batch's fetch and decisions ----------------


class GatedCommit(FakeProducer):
    """A producer whose commit_transaction waits until `go` is set (a commit still in flight)."""

    def __init__(self, failures: dict[str, list[KafkaException]] | None = None) -> None:
        super().__init__(failures or {})
        self.started = threading.Event()
        self.go = threading.Event()
        self.returned = False

    def commit_transaction(self, timeout: float = 0) -> None:
        self.started.set()
        assert self.go.wait(60), "the test never let the commit end"
        try:
            self._call("commit")
        finally:
            self.returned = True


def _gated() -> tuple[BatchTransaction, GatedCommit, FakeConsumer]:
    producer, consumer = GatedCommit(), FakeConsumer(assigned=[("in", 0), ("in", 1), ("in", 2)])
    return BatchTransaction(producer, consumer, FakeClock()), producer, consumer


def test_start_commit_returns_while_the_commit_runs_and_nothing_begins_meanwhile() -> None:
    """Before: commit() held the loop for the whole send-offsets + commit; now it runs on the
    committer thread and the loop may fetch and decide the next batch meanwhile."""
    transaction, producer, _ = _gated()
    ended: list[Outcome] = []
    _consume_batch(transaction)
    in_flight = transaction.start_commit(ended.append)
    assert producer.started.wait(60)  # the commit is running on the committer thread...
    assert not in_flight.done()  # ...and has not ended
    assert transaction.state.value == "committing"
    with pytest.raises(RuntimeError, match="committing"):
        transaction.begin()  # the next batch's transaction waits for this commit
    producer.go.set()
    assert in_flight.wait() is Outcome.COMMITTED
    assert ended == [Outcome.COMMITTED]  # `then` ran (the job's metrics) before wait() returned
    assert transaction.state is State.IDLE and producer.calls == ["begin", "send_offsets", "commit"]
    transaction.close()


def test_an_abort_in_flight_rewinds_both_batches_and_the_first_batch_wins_shared_partitions() -> None:
    """Batch k (in-0 from 10, in-1 from 7) aborts while k+1 (in-0 from 13, in-2 from 40) was
    fetched and decided: k+1 is discarded, so in-2 (only in k+1) must be rewound too, or its
    records are lost; in-0 goes back to k's first offset, not k+1's."""
    transaction, producer, consumer = _gated()
    producer.failures["commit"] = [abortable()]
    ended: list[Outcome] = []
    _consume_batch(transaction)
    in_flight = transaction.start_commit(ended.append)
    following = BatchOffsets()
    for partition, offset in ((0, 13), (0, 14), (2, 40)):
        following.consumed("in", partition, offset)
    producer.go.set()
    assert in_flight.wait(following.first) is Outcome.ABORTED
    assert sorted(consumer.seeks) == [("in", 0, 10), ("in", 1, 7), ("in", 2, 40)]
    assert producer.calls[-1] == "abort" and ended == [Outcome.ABORTED]
    assert transaction.state is State.IDLE
    transaction.close()


def test_a_fatal_commit_in_flight_raises_on_wait_and_skips_then() -> None:
    transaction, producer, consumer = _gated()
    producer.failures["commit"] = [fatal()]
    ended: list[Outcome] = []
    _consume_batch(transaction)
    in_flight = transaction.start_commit(ended.append)
    producer.go.set()
    with pytest.raises(TransactionFatalError, match="fenced"):
        in_flight.wait({("in", 2): 40})
    assert ended == [] and consumer.seeks == [] and "abort" not in producer.calls
    assert transaction.state is State.FAILED
    with pytest.raises(RuntimeError):
        transaction.begin()
    transaction.close()


def test_the_commit_in_flight_is_watched_while_the_loop_watches_a_call_of_its_own() -> None:
    """Before: the watchdog had one slot, so a call watched on the loop's thread while a commit
    was in flight replaced the commit's watch, and a commit that hung then went unreported."""
    producer, hung = BlockingSendOffsets(), []

    def on_hang(step: str, waited_s: float) -> None:
        hung.append(step)
        producer.release.set()  # the real handler ends the process here (exit 4)

    policy = RetryPolicy(call_timeout_s=0.01, hang_grace_s=0.01)
    transaction = BatchTransaction(producer, FakeConsumer(), FakeClock(), policy, CallWatchdog(on_hang))
    _consume_batch(transaction)
    in_flight = transaction.start_commit()
    with transaction.watchdog.watch("the loop's own call", 600.0):  # e.g. a produce waiting for queue space
        assert producer.release.wait(10), "the hung send offsets was never reported"
    in_flight.wait()
    # the hung send offsets is the first report; on a loaded machine the calls after it can
    # outlive this test's 20 ms bound too and be reported after it
    assert hung[:1] == ["send offsets"] and "the loop's own call" not in hung
    transaction.close()


# -- the job's side of the overlap -------------------------------------------------------------


def _job_with(ruleset: Ruleset, producer: FakeProducer) -> tuple[Any, BatchTransaction, FakeConsumer]:
    from streams.runtime.pipeline.job import GuardJob

    consumer = FakeConsumer(assigned=[("in", 0), ("in", 1), ("in", 2)])
    job = GuardJob(Settings(bootstrap_servers="127.0.0.1:1"), ruleset)
    return job, BatchTransaction(producer, consumer, FakeClock()), consumer


def _decided(first_offsets: dict[int, int], records: int = 2) -> Any:
    from streams.runtime.pipeline.job import DecidedBatch

    batch = DecidedBatch(started=0.0)
    for partition, first in first_offsets.items():
        for offset in range(first, first + records):
            batch.offsets.consumed("in", partition, offset)
            batch.tally.records_in["in"] += 1
    batch.add("partner.x.events", b"out", None, None)
    return batch


def _sample(job: Any, name: str, **labels: str) -> float:
    value = job.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def test_a_revoke_during_the_overlap_waits_for_the_commit_in_flight(ruleset: Ruleset) -> None:
    """The rebalance callback runs inside consume(), which now runs while a commit is in flight:
    it must not give the partitions up before that commit has ended (no transaction spans a
    revoke). Here the commit ends only once another thread lets it; the revoke records, at the
    moment it gives the partitions up, whether the commit had returned."""
    producer = GatedCommit()
    job, transaction, consumer = _job_with(ruleset, producer)
    seen_at_revoke: list[bool] = []

    class Recording:
        def add(self, partitions: list[TopicPartition]) -> None:
            seen_at_revoke.append(producer.returned)

    job.revocations = Recording()
    job._start_commit(_decided({0: 10}), transaction)

    def let_the_commit_end() -> None:
        if producer.started.wait(60):
            producer.go.set()

    threading.Thread(target=let_the_commit_end, daemon=True).start()
    job._on_revoke(consumer, [TopicPartition("in", 0)])  # what consume() would call, on this thread
    assert seen_at_revoke == [True]
    assert job._settle(None) is Outcome.COMMITTED
    transaction.close()


def test_the_job_discards_the_next_batch_and_rewinds_both_when_the_commit_in_flight_aborts(
    ruleset: Ruleset,
) -> None:
    producer = FakeProducer({"commit": [abortable()]})
    job, transaction, consumer = _job_with(ruleset, producer)
    job._start_commit(_decided({0: 10, 1: 7}), transaction)
    following = _decided({0: 12, 2: 40})  # fetched and decided while batch k committed
    assert job._settle(following) is Outcome.ABORTED
    assert sorted(consumer.seeks) == [("in", 0, 10), ("in", 1, 7), ("in", 2, 40)]
    assert producer.produced == [("partner.x.events", b"out")]  # k's output only; k+1's never sent
    assert _sample(job, "partner_guard_transactions_total", outcome="aborted") == 1
    assert _sample(job, "partner_guard_records_in_total", topic="in") == 0  # nothing counted
    assert job.in_flight is None and transaction.state is State.IDLE
    transaction.close()


def test_the_job_counts_a_batch_once_its_commit_in_flight_committed(ruleset: Ruleset) -> None:
    producer = GatedCommit()
    job, transaction, _ = _job_with(ruleset, producer)
    job._start_commit(_decided({0: 10, 1: 7}), transaction)
    assert producer.started.wait(60)
    assert _sample(job, "partner_guard_records_in_total", topic="in") == 0  # not committed yet
    producer.go.set()
    assert job._settle(None) is Outcome.COMMITTED
    assert _sample(job, "partner_guard_records_in_total", topic="in") == 4
    assert _sample(job, "partner_guard_transactions_total", outcome="committed") == 1
    transaction.close()


def test_an_abort_does_not_rewind_a_partition_revoked_meanwhile_to_its_old_offset(ruleset: Ruleset) -> None:
    """k holds in-0 from 10 and aborts; in-0 is revoked during k+1's fetch (the callback waits
    for k), another member commits it up to 40 and it comes back, so k+1 reads it from 40: the
    rewind goes to 40, not to k's 10 (10..39 were the other member's and are committed)."""
    producer = FakeProducer({"commit": [abortable()]})
    job, transaction, consumer = _job_with(ruleset, producer)
    job._start_commit(_decided({0: 10}), transaction)
    job._on_revoke(consumer, [TopicPartition("in", 0)])
    assert job._settle(_decided({0: 40})) is Outcome.ABORTED
    assert consumer.seeks == [("in", 0, 40)]
    transaction.close()


def test_a_batchs_outputs_are_not_kept_while_its_commit_runs(ruleset: Ruleset) -> None:
    """Once produced, a batch's output records live in librdkafka only: the loop keeps no copy
    while the commit runs and the next batch is decided."""
    producer = GatedCommit()
    job, transaction, _ = _job_with(ruleset, producer)
    batch = _decided({0: 10})
    job._start_commit(batch, transaction)
    try:
        assert producer.started.wait(10)
        assert batch.outputs == []
    finally:
        producer.go.set()
        job._settle(None)
        transaction.close()


def test_a_commit_failing_while_the_loop_stops_on_another_error_is_logged(
    ruleset: Ruleset, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop failed first (say consume() raised): the commit in flight still ends before the
    clients close, and its own fatal error is logged, not lost."""
    producer = GatedCommit({"commit": [fatal()]})
    job, transaction, _ = _job_with(ruleset, producer)
    job._start_commit(_decided({0: 10}), transaction)
    producer.go.set()
    with caplog.at_level(logging.ERROR):
        job._settle_on_error()
    assert job.in_flight is None
    assert "the last batch's transaction failed too" in caplog.text
    transaction.close()
