"""`partner-guard run`: consume, decide, produce and commit offsets in one transaction a batch.

The loop is single-threaded: rebalance callbacks run inside `consume()`, between
transactions, so no transaction ever spans a revoke. An abortable error aborts the
transaction and rewinds the consumer to the batch start; a fatal one stops the job with a
non-zero exit (a supervisor restarts it and the transactional id fences the old instance).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings
from streams.runtime.decider import BatchTally, GuardState, RecordDecider
from streams.runtime.kafka_io import Headers, produce
from streams.runtime.metrics import GuardMetrics, Heartbeat, serve_http
from streams.runtime.payload import PayloadProtector
from streams.runtime.records import SourceRef
from streams.runtime.state_reader import StateReader
from streams.runtime.topics import ensure_topics

log = logging.getLogger(__name__)
INIT_TIMEOUT_S = 30.0


class GuardJob:
    """One guard instance."""

    def __init__(
        self,
        settings: Settings,
        ruleset: Ruleset,
        metrics: GuardMetrics | None = None,
        payload: PayloadProtector | None = None,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.metrics = metrics or GuardMetrics()
        self.heartbeat = Heartbeat()
        self.payload = payload or PayloadProtector("full")
        self.stopping = False
        self.ready = False
        self.kafka_base: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka}
        self.state = GuardState(settings, self.kafka_base, self.metrics)
        self.decider = RecordDecider(settings, ruleset, self.payload, self.state)
        self._topic_by_partner = self.decider.topic_by_partner

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """Signal handler: finish the open batch, then exit cleanly."""
        log.info("signal %s received: finishing the current batch", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        s = self.settings
        self.metrics.ruleset.info(
            {"digest": self.ruleset.digest, "partners": ",".join(self.ruleset.partners)}
        )
        server = serve_http(
            self.metrics, s.metrics_host, s.metrics_port, lambda: self.ready, self.heartbeat.alive
        )
        try:
            if s.create_topics:
                ensure_topics(
                    self.kafka_base,
                    [*s.input_topics, *self._topic_by_partner.values(), s.blocked_topic],
                    [s.consent_topic, s.signup_status_topic],
                    s.partitions,
                )
            return self._run_loop()
        finally:
            server.shutdown()

    def _load_state(self) -> StateReader:
        return self.state.load(lambda: self.stopping, self.heartbeat.beat)

    def _update_state_gauges(self) -> None:
        self.state.update_gauges()

    def _run_loop(self) -> int:
        s = self.settings
        reader = self._load_state()
        transactional_id = s.transactional_id or f"{s.group_id}-{socket.gethostname()}-{os.getpid()}"
        producer = Producer(
            {
                **self.kafka_base,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        producer.init_transactions(INIT_TIMEOUT_S)
        consumer = Consumer(
            {
                "fetch.wait.max.ms": 50,  # librdkafka default 500 ms costs latency; passthrough wins
                **self.kafka_base,
                "group.id": s.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": s.session_timeout_ms,
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )
        consumer.subscribe(s.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: deciding %s for %s", s.input_topics, list(self.ruleset.partners))
        exit_code = 0
        last_lag_update = 0.0
        try:
            while not self.stopping:
                self.heartbeat.beat()
                messages = consumer.consume(s.batch_size, s.batch_timeout_ms / 1000)
                if messages:
                    self._process_batch(messages, consumer, producer, reader)
                else:
                    reader.poll()
                if time.monotonic() - last_lag_update > 5:
                    last_lag_update = time.monotonic()
                    self._update_consumer_lag(consumer)
                    self._update_state_gauges()
        except KafkaException as exc:
            log.error("fatal Kafka error, stopping: %s", exc.args[0].str())
            exit_code = 3
        finally:
            self.ready = False
            self.metrics.ready.set(0)
            consumer.close()
            producer.flush(10)
            self.state.close()
            log.info("stopped")
        return exit_code

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partition(s)", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
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

    def _emit_input(
        self, producer: Producer, message: Message, source: SourceRef, stale: bool, tally: BatchTally
    ) -> None:
        """Decode, decide and produce the outputs of one input record (one per partner)."""

        def sink(topic: str, value: bytes, key: bytes | None, headers: Headers | None) -> None:
            produce(producer, topic, value, key=key, headers=headers)

        self.decider.emit(message.value(), source, stale, tally, sink)

    def _process_batch(
        self, messages: list[Message], consumer: Consumer, producer: Producer, reader: StateReader
    ) -> None:
        s = self.settings
        started = time.monotonic()
        stale = self.state.catch_up_before_batch(time.monotonic())  # P9: after the fetch
        tally = BatchTally()
        first_offsets: dict[tuple[str, int], int] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        producer.begin_transaction()
        for message in messages:
            error = message.error()
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if error is not None or topic is None or partition is None or offset is None:
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error.str())
                continue
            first_offsets.setdefault((topic, partition), offset)
            next_offsets[(topic, partition)] = offset + 1
            kind, ts = message.timestamp()
            source = SourceRef(
                topic, partition, offset, ts if kind else None, message.key(), s.topic_format(topic)
            )
            self._emit_input(producer, message, source, stale, tally)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        if self._commit(producer, consumer, offsets):
            self._record(tally, started)
        else:
            for (topic, partition), offset in first_offsets.items():
                consumer.seek(TopicPartition(topic, partition, offset))

    def _commit(self, producer: Producer, consumer: Consumer, offsets: list[TopicPartition]) -> bool:
        """Send offsets and commit; False when the transaction had to be aborted."""
        try:
            if offsets:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            while True:
                try:
                    producer.commit_transaction(60)
                    self.metrics.transactions.labels("committed").inc()
                    return True
                except KafkaException as exc:
                    if not exc.args[0].retriable():
                        raise
                    log.warning("retrying commit: %s", exc.args[0].str())
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                log.warning("aborting transaction and replaying the batch: %s", error.str())
                producer.abort_transaction(60)
                self.metrics.transactions.labels("aborted").inc()
                return False
            raise

    def _record(self, tally: BatchTally, started: float) -> None:
        tally.apply(self.metrics, time.monotonic() - started)
