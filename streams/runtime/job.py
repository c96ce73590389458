"""`partner-guard run`: consume, decide, produce and commit offsets in one transaction a batch.

The loop is single-threaded: rebalance callbacks run inside `consume()`, between
transactions, so no transaction ever spans a revoke. The transaction's lifecycle (begin,
produce, send offsets, commit, bounded retry, abort and rewind) lives in
`streams.runtime.transaction.BatchTransaction`; this loop only feeds it. A fatal error stops
the job with a non-zero exit (a supervisor restarts it and the transactional id fences the
old instance).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.core.decide import consults_state, decide, receivable_types
from streams.core.models import Decision, Envelope, Event, Malformed, StateSnapshot
from streams.core.reasons import Reason
from streams.core.rules.ruleset import Ruleset
from streams.runtime.avro_input import AvroDecoder, avro_decoder, decode_input
from streams.runtime.broker_watch import BrokerWatch, Readiness
from streams.runtime.config import Settings
from streams.runtime.faults import BeforeCommitFault
from streams.runtime.kafka_io import Headers
from streams.runtime.metrics import GuardMetrics, Heartbeat, serve_http
from streams.runtime.payload import PayloadProtector
from streams.runtime.preflight import kafka_client_config
from streams.runtime.records import (
    CONTAINED_ERROR_DETAIL,
    BlockedInput,
    SourceRef,
    Withheld,
    blocked_input,
    blocked_record,
    partner_record,
)
from streams.runtime.state import ConsentTable, SignupStatusTable, snapshot_for
from streams.runtime.state_reader import StateReader
from streams.runtime.state_store import StateTables, open_configured_tables, report_store_metrics
from streams.runtime.topics import ensure_topics
from streams.runtime.transaction import BatchTransaction, Outcome, TransactionFatalError

log = logging.getLogger(__name__)
INIT_TIMEOUT_S = 30.0
# Why 200: undeclared field paths are chosen by whoever produces the input; past this many
# distinct ones they are counted as "_other" so the metric's label set stays bounded.
MAX_UNDECLARED_LABELS = 200
NO_STATE = {False: StateSnapshot(stale=False), True: StateSnapshot(stale=True)}  # decisions read no state


@dataclass
class BatchTally:
    """Counts of one batch, applied to the metrics only once the transaction commits."""

    records_in: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    blocked: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    stripped: Counter[str] = field(default_factory=Counter)
    undeclared: Counter[str] = field(default_factory=Counter)
    timestamps_ms: list[int] = field(default_factory=list)

    def add(self, outputs: _Outputs) -> None:
        """Count the decisions of one input's outputs."""
        for decision in outputs.forwarded:
            self.forwarded[decision.partner] += 1
            if decision.stripped:
                self.stripped[decision.partner] += len(decision.stripped)
        for entry in outputs.withheld:  # reasons are expanded into metrics once per batch
            self.blocked[(entry.decision.partner, entry.reasons)] += 1


class OutputTooLargeError(Exception):
    """An output record (key and value) would exceed `max_record_bytes`."""


@dataclass(slots=True)
class _Outputs:
    """The records one input produces, built completely before any is produced."""

    records: list[tuple[str, bytes, bytes | None, Headers | None]] = field(default_factory=list)
    forwarded: list[Decision] = field(default_factory=list)
    withheld: list[Withheld] = field(default_factory=list)

    def add(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, limit: int) -> None:
        if len(value) + len(key or b"") > limit:
            raise OutputTooLargeError(topic)
        self.records.append((topic, value, key, headers))


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
        self.heartbeat = Heartbeat()
        self.payload = payload or PayloadProtector("full")
        self.clock = clock
        self.stopping = False
        self._metrics_address = ""
        self.readiness = Readiness(self.metrics.ready)
        self.tables = StateTables(ConsentTable(), SignupStatusTable())
        self.consent, self.status = self.tables.consent, self.tables.status
        self._invalid_reported: dict[str, int] = {}
        self._avro: AvroDecoder | None = avro_decoder(settings)
        self._undeclared_labels: set[str] = set()
        self._receivable = receivable_types(ruleset)
        self._topic_by_partner = {rule.partner: rule.topic for rule in ruleset.rules}
        self.fault = BeforeCommitFault.from_env()  # inert unless a reliability test arms it
        self.kafka_base: dict[str, Any] = kafka_client_config(settings)

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
            self.metrics, s.metrics_host, s.metrics_port, self.readiness.is_ready, self.heartbeat.alive
        )
        self._metrics_address = f"http://{s.metrics_host}:{server.server_port}"
        watch = BrokerWatch(self.kafka_base, self.readiness).start()
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
            watch.stop()
            server.shutdown()

    def _load_state(self) -> StateReader:
        s = self.settings
        self.tables = open_configured_tables(s, self.kafka_base)
        self.consent, self.status = self.tables.consent, self.tables.status
        for name, table_store in self.tables.stores.items():
            if table_store.rebuilt_because is not None:
                self.metrics.state_rebuilds.labels(name).inc()
        reader = StateReader(
            self.kafka_base,
            {s.consent_topic: self.consent.apply, s.signup_status_topic: self.status.apply},
            self.metrics,
            start_offsets=self.tables.start_offsets(),
            checkpoint=self.tables.checkpoint if self.tables.stores else None,
        )
        while not self.stopping:
            self.heartbeat.beat()
            if reader.catch_up(s.state_catchup_timeout_ms / 1000) == 0:
                break
        self._update_state_gauges()
        log.info("state loaded: %d consent entries, %d sign-up statuses", len(self.consent), len(self.status))
        return reader

    def _update_state_gauges(self) -> None:
        s, m = self.settings, self.metrics
        m.state_entries.labels("consent").set(len(self.consent))
        m.state_entries.labels("signup_status").set(len(self.status))
        report_store_metrics(self.tables, m, time.time())
        for topic, table in ((s.consent_topic, self.consent), (s.signup_status_topic, self.status)):
            counted = m.state_invalid.labels(topic)
            counted.inc(table.invalid_records - self._invalid_reported.get(topic, 0))
            self._invalid_reported[topic] = table.invalid_records

    def _run_loop(self) -> int:
        s = self.settings
        reader = self._load_state()
        transactional_id = s.transactional_id or f"{s.group_id}-{socket.gethostname()}-{os.getpid()}"
        producer = Producer(
            {
                "linger.ms": 5,
                "compression.type": "lz4",  # defaults: a librdkafka passthrough property wins
                **self.kafka_base,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
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
        self.readiness.set_deciding(True)
        log.info(
            "ready: ruleset %s, partners %s, input topics %s, metrics on %s, "
            "state %d consent entries and %d sign-up statuses",
            self.ruleset.digest,
            list(self.ruleset.partners),
            s.input_topics,
            self._metrics_address,
            len(self.consent),
            len(self.status),
        )
        exit_code = 0
        last_lag_update = 0.0
        transaction = BatchTransaction(producer, consumer, self.clock)
        try:
            while not self.stopping:
                self.heartbeat.beat()
                messages = consumer.consume(s.batch_size, s.batch_timeout_ms / 1000)
                if messages:
                    self._process_batch(messages, transaction, reader)
                else:
                    reader.poll()
                if self.clock() - last_lag_update > 5:
                    last_lag_update = self.clock()
                    self._update_consumer_lag(consumer)
                    self._update_state_gauges()
        except TransactionFatalError as exc:
            log.error("fatal transaction error, stopping: %s", exc)
            exit_code = 3
        except KafkaException as exc:
            log.error("fatal Kafka error, stopping: %s", exc.args[0].str())
            exit_code = 3
        finally:
            self.readiness.set_deciding(False)
            consumer.close()
            producer.flush(10)
            reader.close()
            self.tables.close()
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

    def _decode(self, raw: bytes | None, input_format: str) -> Event | Envelope | Malformed:
        return decode_input(raw, input_format, self._avro, self._receivable)

    def _emit_input(
        self,
        transaction: BatchTransaction,
        message: Message,
        source: SourceRef,
        stale: bool,
        tally: BatchTally,
    ) -> None:
        """Decode and decide one input; produce its forwarded records and at most one blocked record.

        Every output is built before any is produced, so an exception while building them
        (decoding, deciding, projecting, serializing) ends as an `internal_error` block for
        every partner of this input, never as a crash of the job or a partial set of outputs.
        """
        raw = message.value() or b""
        outputs = _Outputs()
        record: Event | Envelope | Malformed | None = None
        try:
            record = self._decode(message.value(), source.input_format)
            self._build_outputs(record, raw, source, stale, outputs)
        except Exception as exc:
            log.warning(
                "internal error building the outputs of %s[%d]@%d: %s; blocked for every partner",
                source.topic,
                source.partition,
                source.offset,
                type(exc).__name__,
            )
            event_id = record.event_id if isinstance(record, Event | Envelope) else None
            outputs = self._contained_outputs(raw, source, event_id, exc)
        for topic, value, key, headers in outputs.records:
            transaction.produce(topic, value, key=key, headers=headers)
        tally.add(outputs)
        if isinstance(record, Event):
            for path in record.undeclared_fields:
                tally.undeclared[self._undeclared_label(path)] += 1

    def _build_outputs(
        self,
        record: Event | Envelope | Malformed,
        raw: bytes,
        source: SourceRef,
        stale: bool,
        outputs: _Outputs,
    ) -> None:
        s = self.settings
        snapshot = (
            snapshot_for(record, self.consent, self.status, stale)
            if isinstance(record, Event) and consults_state(record, self.ruleset)
            else None
        )
        for decision in decide(record, snapshot or NO_STATE[stale], self.ruleset):
            if not decision.forwarded:
                outputs.withheld.append(Withheld.of(decision))
                continue
            key, value = partner_record(decision)
            if len(value) + len(key or b"") > s.max_record_bytes:
                outputs.withheld.append(Withheld.of(decision, (Reason.RECORD_TOO_LARGE.value,)))
                continue
            outputs.add(self._topic_by_partner[decision.partner], value, key, None, s.max_record_bytes)
            outputs.forwarded.append(decision)
        if not outputs.withheld:
            return
        by_reference = isinstance(record, Envelope) and s.blocked_original == "reference"
        event_id = record.event_id if isinstance(record, Event | Envelope) else None
        shared = blocked_input(source, raw, snapshot, event_id, self.payload, by_reference)
        blocked_key, value, headers = blocked_record(outputs.withheld, shared, source, s.max_record_bytes)
        outputs.add(s.blocked_topic, value, blocked_key, headers, s.max_record_bytes)

    def _contained_outputs(
        self, raw: bytes, source: SourceRef, event_id: str | None, exc: Exception
    ) -> _Outputs:
        """One blocked record, `internal_error` for every partner, built from nothing but the raw bytes."""
        s = self.settings
        try:
            shared = blocked_input(source, raw, None, event_id, self.payload)
        except Exception:  # e.g. redaction of an input that cannot be re-read: keep only its hash
            where = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
            shared = BlockedInput(
                kafka_key=None,
                event_id=None,
                snapshot_json=b"null",
                source_json=orjson.Fragment(orjson.dumps({**where, "format": source.input_format})),
                payload={"payload_mode": self.payload.mode, "original_b64": None},
                original_size=len(raw),
                original_sha256=hashlib.sha256(raw).hexdigest(),
            )
        outputs = _Outputs()
        for rule in self.ruleset.rules:
            decision = Decision(
                partner=rule.partner,
                rule_id=rule.rule_id,
                ruleset_digest=self.ruleset.digest,
                event_id=event_id,
                verdict="block",
                reasons=(Reason.INTERNAL_ERROR.value,),
                details=(f"{CONTAINED_ERROR_DETAIL}{type(exc).__name__}",),
            )
            outputs.withheld.append(Withheld.of(decision))
        blocked_key, value, headers = blocked_record(outputs.withheld, shared, source, s.max_record_bytes)
        outputs.records.append((s.blocked_topic, value, blocked_key, headers))
        return outputs

    def _undeclared_label(self, path: str) -> str:
        """The metric label for an undeclared field path, bounded in number (attackers pick keys)."""
        if path in self._undeclared_labels:
            return path
        if len(self._undeclared_labels) >= MAX_UNDECLARED_LABELS:
            return "_other"
        self._undeclared_labels.add(path)
        return path

    def _process_batch(
        self, messages: list[Message], transaction: BatchTransaction, reader: StateReader
    ) -> None:
        """Decide one batch inside one transaction; its metrics count only once it commits."""
        s = self.settings
        started = self.clock()
        missing = reader.catch_up(s.state_catchup_timeout_ms / 1000)  # P9: after the fetch
        stale = missing > s.max_state_lag_records or (
            self.clock() - reader.last_caught_up > s.max_state_silence_ms / 1000
        )
        if stale:
            log.warning("state is behind by %d record(s): blocking this batch as consent_stale", missing)
        tally = BatchTally()
        transaction.begin()
        for message in messages:
            error = message.error()
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if error is not None or topic is None or partition is None or offset is None:
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error.str())
                continue
            transaction.consumed(topic, partition, offset)
            kind, ts = message.timestamp()
            source = SourceRef(
                topic, partition, offset, ts if kind else None, message.key(), s.topic_format(topic)
            )
            self._emit_input(transaction, message, source, stale, tally)
            tally.records_in[topic] += 1
            if kind:
                tally.timestamps_ms.append(ts)
        self.fault.before_commit()  # inert unless a reliability test arms it
        outcome = transaction.commit()
        self.metrics.transactions.labels(outcome.value).inc()
        if outcome is Outcome.COMMITTED:
            self._record(tally, started)

    def _record(self, tally: BatchTally, started: float) -> None:
        m = self.metrics
        for topic, count in tally.records_in.items():
            m.records_in.labels(topic).inc(count)
        for partner, count in tally.forwarded.items():
            m.decisions.labels(partner, "forward").inc(count)
        reasons: Counter[tuple[str, str]] = Counter()
        for (partner, why), count in tally.blocked.items():
            m.decisions.labels(partner, "block").inc(count)
            for reason in why:
                reasons[(partner, reason)] += count
            if Reason.LEAK_DETECTED in why:
                m.leaks_caught.labels(partner).inc(count)
        for (partner, reason), count in reasons.items():
            m.block_reasons.labels(partner, reason).inc(count)
        for partner, count in tally.stripped.items():
            m.fields_stripped.labels(partner).inc(count)
        for path, count in tally.undeclared.items():
            m.undeclared_fields.labels(path).inc(count)
        now_ms = time.time() * 1000
        for ts in tally.timestamps_ms:
            m.end_to_end_seconds.observe(max(0.0, (now_ms - ts) / 1000))
        m.batch_seconds.observe(self.clock() - started)
