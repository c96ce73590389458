"""`partner-guard run`: consume, decide, produce and commit offsets in one transaction a batch.

A batch is every record already fetched when the loop comes round (`kafka_io.next_batch`):
only an empty buffer is waited on, so a batch never waits to fill, and the records that arrive
while one batch commits make the next. The transaction's lifecycle (begin, produce, send
offsets, commit, bounded retry, abort and rewind) lives in
`streams.runtime.pipeline.transaction.BatchTransaction`; this loop only feeds it.

The loop overlaps a batch's commit with the next batch's work. One round:

1. fetch batch k+1 while batch k's send-offsets and commit run on the committer thread;
2. catch the state up (after that fetch: read-your-revocation) and decide k+1 into a buffer
   of output records (`DecidedBatch`), produced nowhere yet;
3. wait for k's commit: committed, k+1 goes on; aborted, k+1's buffer is discarded and the
   consumer rewound to the first offsets of both batches (k+1 alone may hold a partition);
   failed for good, the job stops (exit 3);
4. begin k+1's transaction, produce its buffer, start its commit, and come round.

Every consumer call stays on the loop's thread. Rebalance callbacks run inside `consume()`,
so with a commit in flight the revoke callback first waits for that commit to end: no
transaction spans a revoke. A batch's metrics are counted on the committer thread the moment
it commits. A fatal error stops the job with a non-zero exit (a supervisor restarts it and
the transactional id fences the old instance): 3 for a fatal error (also an
`init_transactions` that cannot succeed), 4 when a Kafka call hung past its timeout: a
transactional one, `init_transactions` at start, or closing the clients on the way out.
Every transactional call beats the `/healthz` heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from streams import exitcodes
from streams.core.notices import plans_of
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import SourceRef
from streams.runtime.kafka.avro_input import registry_wait_per_batch_s
from streams.runtime.kafka.calls import (
    CallWatchdog,
    RetryPolicy,
    TransactionFatalError,
    liveness_limit_s,
    start_transactions,
)
from streams.runtime.kafka.io import Headers, Revocations, next_batch, records_in
from streams.runtime.kafka.topics import ensure_topics, guard_topic_layout
from streams.runtime.ops.broker_watch import BrokerWatch, Readiness
from streams.runtime.ops.faults import BeforeCommitFault
from streams.runtime.ops.group_lag import GroupLag
from streams.runtime.ops.metrics import GuardMetrics, Heartbeat, serve_http
from streams.runtime.ops.preflight import kafka_client_config
from streams.runtime.pipeline.decider import BatchTally, GuardState, RecordDecider
from streams.runtime.pipeline.notices import ForwardTracker, OptoutNotifier
from streams.runtime.pipeline.transaction import BatchOffsets, BatchTransaction, CommitInFlight, Outcome
from streams.runtime.state.reader import StateReader

log = logging.getLogger(__name__)
# Consumer-lag and state gauges are refreshed this often: each refresh asks the broker for
# watermarks, which the hot loop should not do every batch.
GAUGE_INTERVAL_S = 5.0
# On the way out, how long the producer may take to deliver what is queued (records of a
# committed transaction are already written; this only drains librdkafka's queue).
STOP_FLUSH_TIMEOUT_S = 10.0
# The transactional producer's linger. Nothing it sends is visible before the commit, and
# commit_transaction flushes at once whatever linger says, so a long linger costs no latency;
# it only spares the loop waking librdkafka's sender while a batch is decided. Measured against
# 5 ms (py-spy, 2,000 records/s offered): produce() 9-10 % -> 6.6 % of the loop's samples (its
# write() to the sender's wake-up pipe 4-5 % -> 1.7 %), the embedded broker 0.47-0.54 -> 0.38-0.40
# of a core, the commit's p50 unchanged (~4 ms).
TRANSACTION_LINGER_MS = 100
# How long a thread holding the GIL runs before a waiting thread gets it (CPython's default is
# 5 ms). The committer thread needs the GIL for a moment after each transactional call returns;
# with the default it waited up to 5 ms each time behind the loop deciding the next batch, which
# stretched every commit and gave back what the overlap saved. Measured at 4,300 records/s
# against the sequential loop (benchmarks/RESULTS.md): 5 ms, p99 target met in 3 of 13 trials
# (sequential 4 of 13); 0.5 ms, in 7 of 9 (sequential 5 of 9).
GIL_SWITCH_INTERVAL_S = 0.0005
# How often the input consumer refreshes topic metadata (librdkafka's default is 5 min). An
# input topic recreated after the consumer rejoined its group (a broker restored or restarted
# empty) is seen, and its partitions assigned, only at the next refresh: measured on the
# embedded broker, 3.5 minutes of nothing decided with the default. A passthrough value wins.
INPUT_METADATA_REFRESH_MS = 10_000


@dataclass
class DecidedBatch:
    """A batch decided while the previous one commits: its outputs wait here, unproduced."""

    started: float
    offsets: BatchOffsets = field(default_factory=BatchOffsets)
    outputs: list[tuple[str, bytes | None, bytes | None, Headers | None]] = field(default_factory=list)
    tally: BatchTally = field(default_factory=BatchTally)
    layer: dict[bytes, bytes | None] | None = None  # the forwarded table's writes of this batch

    def add(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None) -> None:
        """The decider's sink: keep one output record for the batch's transaction."""
        self.outputs.append((topic, value, key, headers))

    def add_keyed(self, topic: str, value: bytes | None, key: bytes) -> None:
        """The notifier's sink: a notice, or a forwarded-topic record (None: a tombstone)."""
        self.outputs.append((topic, value, key, None))


class GuardJob:
    """One guard instance."""

    def __init__(
        self,
        settings: Settings,
        ruleset: Ruleset,
        metrics: GuardMetrics | None = None,
        payload: PayloadProtector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.metrics = metrics or GuardMetrics()
        self.payload = payload or PayloadProtector("full")
        self.clock = clock
        self.stopping = False
        self._metrics_address = ""
        self.readiness = Readiness(self.metrics.ready, track_partitions=True)
        self.owned: set[tuple[str, int]] = set()  # input partitions assigned to this instance
        self.kafka_base: dict[str, Any] = kafka_client_config(settings)
        self.retry = RetryPolicy.configured(settings.transaction_call_timeout_ms, self.kafka_base)
        self.watchdog = CallWatchdog()  # one thread: every librdkafka call that could hang
        self.revocations = Revocations()  # partitions revoked while a batch is collected
        # Between two beats: the state catch-up, then the registry lookups of one batch (bounded).
        unwatched_s = settings.state_catchup_timeout_ms / 1000 + registry_wait_per_batch_s(settings)
        self.heartbeat = Heartbeat(liveness_limit_s(self.retry, unwatched_s))
        self.state = GuardState(settings, self.kafka_base, self.metrics)
        self.decider = RecordDecider(settings, ruleset, self.payload, self.state, self.heartbeat.beat)
        self.metrics.registry_open.set_function(self.decider.registry_open)
        self._topic_by_partner = self.decider.topic_by_partner
        # Opt-out notices (P12): on when some rule sends them; the consent topic is then also
        # a group input, and forwards are remembered in the forwarded topic.
        self.plans = plans_of(ruleset)
        self.notifier: OptoutNotifier | None = None
        self.state.track_forwards = any(plan.kinds for plan in self.plans.values())
        self._in_flight_layer: dict[bytes, bytes | None] | None = None
        self.fault = BeforeCommitFault.from_env()  # inert unless a reliability test arms it
        self.in_flight: CommitInFlight | None = None  # the commit the loop has not yet waited for
        # Partitions revoked while `in_flight` ran: an abort must not rewind them to its offsets.
        self.revoked_in_flight: set[tuple[str, int]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """Signal handler: finish the open batch, then exit cleanly."""
        log.info("signal %s received: finishing the current batch", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM, SIGINT or SIGHUP; returns the process exit code."""
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(stop, self.request_stop)
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        try:
            return self._run_with_metrics()
        finally:
            sys.setswitchinterval(switch_interval)

    def _run_with_metrics(self) -> int:
        settings = self.settings
        self.metrics.ruleset.info(
            {"digest": self.ruleset.digest, "partners": ",".join(self.ruleset.partners)}
        )
        server = serve_http(
            self.metrics,
            settings.metrics_host,
            settings.metrics_port,
            self.readiness.is_ready,
            self.heartbeat.alive,
        )
        self._metrics_address = f"http://{settings.metrics_host}:{server.server_port}"
        watch = BrokerWatch(self.kafka_base, self.readiness).start()
        group = GroupLag(self.kafka_base, settings.group_id, settings.input_topics, self.metrics.group_lag)
        group.start(self.readiness.set_group)
        try:
            if settings.create_topics:
                plain, compacted = guard_topic_layout(settings, self.ruleset)
                ensure_topics(self.kafka_base, plain, compacted, settings.partitions)
            return self._run_loop()
        finally:
            group.stop()
            watch.stop()
            server.shutdown()

    def _load_state(self) -> StateReader:
        reader = self.state.load(lambda: self.stopping, self.heartbeat.beat)
        self._track_forwards()
        return reader

    def _state_reloaded(self, ready: bool) -> None:
        """The state is read again (a state topic changed under the guard): not ready meanwhile,
        and the forward tracker and notifier follow the newly opened forwarded table."""
        self.readiness.set_deciding(ready)
        if ready:
            self._track_forwards()

    def _track_forwards(self) -> None:
        if self.state.track_forwards:
            settings, table = self.settings, self.state.forwarded
            self.decider.track(
                ForwardTracker(self.plans, table, settings.forwarded_topic, settings.optout_lookback)
            )
            self.notifier = OptoutNotifier(
                self.plans, self.ruleset.digest, table, settings.forwarded_topic, settings.optout_lookback
            )

    def _update_state_gauges(self) -> None:
        self.state.update_gauges()

    def _run_loop(self) -> int:
        settings = self.settings
        self.state.on_reload = self._state_reloaded
        transactional_id = settings.resolved_transactional_id(socket.gethostname(), os.getpid())
        producer = Producer(
            {
                "linger.ms": TRANSACTION_LINGER_MS,
                "compression.type": "lz4",  # defaults: a librdkafka passthrough property wins
                **self.kafka_base,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
            }
        )
        producer = self.fault.wrap_producer(producer)  # itself unless a reliability test arms a hang
        try:  # fences an earlier instance with this id: waits while its open transaction aborts
            start_transactions(producer, self.retry, self.clock, self.watchdog, self.heartbeat.beat)
        except TransactionFatalError as exc:
            log.error("fatal transaction error at start, stopping: %s", exc)
            self._close(None, producer)
            return exitcodes.JOB_FAILED
        # The state is read only now: the forwarded topic is written in this id's transactions,
        # and a transaction the previous instance left open (killed between produce and commit)
        # holds back every read_committed reader of it until `init_transactions` aborted it.
        self._load_state()
        consumer = Consumer(
            {
                "fetch.wait.max.ms": 50,  # librdkafka default 500 ms costs latency; passthrough wins
                "topic.metadata.refresh.interval.ms": INPUT_METADATA_REFRESH_MS,
                **self.kafka_base,
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )
        group_inputs = [*settings.input_topics, *([settings.consent_topic] if self.notifier else [])]
        consumer.subscribe(group_inputs, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.readiness.set_deciding(True)
        log.info(
            "ready: ruleset %s, partners %s, input topics %s, metrics on %s, "
            "state %d consent entries and %d sign-up statuses",
            self.ruleset.digest,
            list(self.ruleset.partners),
            settings.input_topics,
            self._metrics_address,
            len(self.state.consent),
            len(self.state.signup_status),
        )
        exit_code = exitcodes.OK
        last_lag_update = 0.0
        transaction = BatchTransaction(
            producer, consumer, self.clock, self.retry, self.watchdog, self.heartbeat.beat
        )
        try:
            while not self.stopping:
                self.heartbeat.beat()
                messages = next_batch(  # 1. while the previous batch commits
                    consumer, settings.batch_size, settings.batch_timeout_ms / 1000, self.revocations
                )
                decided = self._decide(messages) if messages else None  # 2.
                if not messages:
                    self.state.poll()
                if self._settle(decided) is Outcome.ABORTED:  # 3.
                    decided = None  # rewound: decided again from its first offsets
                if decided is not None:
                    self._start_commit(decided, transaction)  # 4.
                if self.clock() - last_lag_update > GAUGE_INTERVAL_S:
                    last_lag_update = self.clock()
                    self._update_consumer_lag(consumer)
                    self._update_state_gauges()
            self._settle(None)  # stopping: the last batch's commit ends before the clients close
        except TransactionFatalError as exc:
            log.error("fatal transaction error, stopping: %s", exc)
            exit_code = exitcodes.JOB_FAILED
        except KafkaException as exc:
            log.error("fatal Kafka error, stopping: %s", exc.args[0].str())
            exit_code = exitcodes.JOB_FAILED
        finally:
            self._settle_on_error()
            self.readiness.set_deciding(False)
            transaction.close()
            self._close(consumer, producer)
        return exit_code

    def _close(self, consumer: Consumer | None, producer: Producer) -> None:
        """Close the clients, each call watched: none takes a timeout that bounds it for sure
        (closing a consumer leaves the group, librdkafka#4527), so one that hangs exits 4."""
        limit = self.retry.hung_after_s
        if consumer is not None:
            with self.watchdog.watch("consumer close", limit):
                consumer.close()
        with self.watchdog.watch("producer flush", STOP_FLUSH_TIMEOUT_S + self.retry.hang_grace_s):
            producer.flush(STOP_FLUSH_TIMEOUT_S)
        with self.watchdog.watch("state close", limit):
            self.state.close()
        log.info("stopped")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partition(s)", len(partitions))
        # readiness counts input partitions only: the consent topic, also consumed as a group input
        # for opt-out notices, is not what "this instance is consuming" means
        inputs = set(self.settings.input_topics)
        self.owned.update((tp.topic, tp.partition) for tp in partitions if tp.topic in inputs)
        self._owned_changed()

    def _owned_changed(self) -> None:
        self.metrics.assigned_partitions.set(len(self.owned))
        self.readiness.set_owned(frozenset(self.owned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs inside `consume()`; a commit in flight ends before the partitions are given up."""
        in_flight = self.in_flight
        if in_flight is not None:
            in_flight.join()
            self.revoked_in_flight.update((tp.topic, tp.partition) for tp in partitions)
        self.revocations.add(partitions)
        self.owned.difference_update((tp.topic, tp.partition) for tp in partitions)
        self._owned_changed()
        log.info("revoked %d partition(s)", len(partitions))

    def _update_consumer_lag(self, consumer: Consumer) -> None:
        try:
            assignment = consumer.assignment()
            for tp in consumer.position(assignment):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                        max(0, high - tp.offset)
                    )
        except KafkaException:
            pass  # a metric, never a reason to stop

    # -- one batch ---------------------------------------------------------------------------

    def _decide(self, messages: list[Message]) -> DecidedBatch:
        """Catch the state up (P9: after the fetch), then decide every input into a buffer."""
        settings, notifier = self.settings, self.notifier
        batch = DecidedBatch(self.clock())
        stale = self.state.catch_up_before_batch(self.clock())
        self.decider.start_batch()
        if notifier is not None:
            batch.layer = self.state.forwarded.open_layer()
        for message, topic, partition, offset in records_in(messages, log, "consume"):
            batch.offsets.consumed(topic, partition, offset)
            kind, ts = message.timestamp()
            if notifier is not None and topic == settings.consent_topic:  # a consent change: P12
                try:
                    notifier.on_record(
                        message.key(),
                        message.value(),
                        ts if kind else None,
                        batch.tally.notices,
                        batch.add_keyed,
                    )
                except Exception as exc:  # one consent record never stops the job: logged, counted
                    log.error(
                        "consent record %s[%d]@%d: notices not built (%s)",
                        topic,
                        partition,
                        offset,
                        type(exc).__name__,
                    )
                    batch.tally.notice_errors += 1
                batch.tally.consent_changes += 1
                continue
            source = SourceRef(
                topic, partition, offset, ts if kind else None, message.key(), settings.topic_format(topic)
            )
            self.decider.emit(message.value(), source, stale, batch.tally, batch.add)
        if notifier is not None and not batch.outputs:
            self._note_progress(batch)
        return batch

    def _note_progress(self, batch: DecidedBatch) -> None:
        """A batch of consent records that changed nothing still writes one record: the consent
        offsets it reached, to the forwarded topic (`p|` keys, compacted away). Measured on the
        embedded broker: a transaction with offsets and no record, after one with records, does
        not commit its offsets."""
        for (topic, partition), offset in batch.offsets.next.items():
            key = f"p|{topic}|{partition}".encode()
            batch.add_keyed(self.settings.forwarded_topic, b'{"next_offset":%d}' % offset, key)

    def _settle(self, decided: DecidedBatch | None) -> Outcome | None:
        """Wait for the commit in flight, if any; when it aborted, rewind `decided`'s partitions too."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return None
        layer, self._in_flight_layer = self._in_flight_layer, None
        outcome = in_flight.wait(
            decided.offsets.first if decided is not None else None, self.revoked_in_flight
        )
        if outcome is Outcome.COMMITTED and layer is not None:
            self.state.forwarded.fold(layer)  # its markers and notice states hold from now on
        elif outcome is Outcome.ABORTED and self.notifier is not None:
            self.state.forwarded.drop_layers()  # this batch's and `decided`'s: both are decided again
        return outcome

    def _settle_on_error(self) -> None:
        """Stopping on an error with a commit in flight: let it end before the clients close, and
        say how it ended (its own fatal error would otherwise go unreported)."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return
        try:
            log.info("the last batch's transaction ended %s", in_flight.wait().value)
        except TransactionFatalError as exc:
            log.error("the last batch's transaction failed too: %s", exc)
        except Exception as exc:  # already stopping on another error: log the kind only
            log.error("the last batch's transaction failed too: %s", type(exc).__name__)

    def _start_commit(self, batch: DecidedBatch, transaction: BatchTransaction) -> None:
        """Begin the batch's transaction, produce its outputs, and start its commit."""
        transaction.begin(batch.offsets)
        for topic, value, key, headers in batch.outputs:
            transaction.produce(topic, value, key, headers)
        tally, started = batch.tally, batch.started
        batch.outputs.clear()  # librdkafka holds them now: never a second copy while k+1 is decided
        self.fault.before_commit()  # inert unless a reliability test arms it
        self.revoked_in_flight.clear()
        self._in_flight_layer = batch.layer
        self.in_flight = transaction.start_commit(lambda outcome: self._committed(outcome, tally, started))

    def _committed(self, outcome: Outcome, tally: BatchTally, started: float) -> None:
        """On the committer thread, as the batch's transaction ends: its metrics, once committed."""
        self.metrics.transactions.labels(outcome.value).inc()
        if outcome is Outcome.COMMITTED:
            self._record(tally, started)

    def _record(self, tally: BatchTally, started: float) -> None:
        tally.apply(self.metrics, self.clock() - started)
