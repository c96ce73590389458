"""The guard as a Faust app (faust-streaming): the same decisions, delivered by a Faust worker.

Start it either way (both read the same settings: `--config`/`PARTNER_GUARD_CONFIG` YAML and
`PARTNER_GUARD_*` environment):

    partner-guard run --engine faust
    faust -A streams.engines.faust_app worker -l info

Everything that decides what leaves is shared with the confluent-kafka job
(`streams.runtime.pipeline.decider`): the state tables and their catch-up, the decision core, the
partner and blocked record formats, payload modes and metrics. This module owns only the
Faust wiring: one agent reads the input topics in batches (`take_events`), loads the state
before its first batch, catches the state up after each fetch (read-your-revocation), and
sends each input's outputs before the batch is acknowledged.

The engine contract (`streams.engines`): the guard's own `/metrics`, `/healthz`, `/readyz`; a
`CallWatchdog` on each batch's wait for the broker's acknowledgements (exit 4 once it is 10 s
past `transaction_call_timeout_ms`); the heartbeat beaten by the batch while one runs, by the
idle timer otherwise; state and consumer lag (inputs not yet decided); SIGTERM/SIGINT finish
the open batch and commit it (`stream_wait_empty`), exit 0. Named gap: no transaction metrics.

Delivery, measured against the embedded broker (Tansu 0.6, aiokafka 0.14):

- `at_least_once` (Faust's default): Faust commits only acknowledged offsets, after
  flushing the producer, so a crash loses nothing but re-delivers what was decided since
  the last commit (`broker_commit_interval`); P8 (no duplicates) does not hold, so the
  engine refuses to start unless `faust_accepted_gaps` lists `P8`.
- `exactly_once`: Faust keeps one transactional producer per input partition and commits
  that partition's offsets in its transaction; outputs are sent through the producer of the
  input's partition. The embedded broker (Tansu 0.6) refuses aiokafka's InitProducerId
  request (the producer fails to start with `UnknownError`), so this mode cannot start there
  and is not exercised by this repo's tests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
from faust.types import EventT, StreamT

from streams import exitcodes
from streams.core.errors import RefusalError
from streams.engines.faust_auth import broker_credentials
from streams.runtime.config import Settings
from streams.runtime.formats.records import SourceRef
from streams.runtime.kafka.avro_input import registry_wait_per_batch_s
from streams.runtime.kafka.calls import (
    LIVENESS_MARGIN_S,
    CallWatchdog,
    RetryPolicy,
    exit_hung,
    liveness_limit_s,
)
from streams.runtime.kafka.io import Headers
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.ops.broker_watch import BrokerWatch, Readiness
from streams.runtime.ops.faults import BeforeCommitFault
from streams.runtime.ops.metrics import GuardMetrics, Heartbeat, serve_http
from streams.runtime.ops.preflight import kafka_client_config
from streams.runtime.ops.startup import GuardSetup, StartupError
from streams.runtime.pipeline.decider import BatchTally, GuardState, RecordDecider

log = logging.getLogger(__name__)
AGENT_NAME = "partner-guard"
# Faust commits acknowledged offsets this often; it bounds what a crash re-delivers.
COMMIT_INTERVAL_S = 1.0
# How often the idle worker applies new state records (between batches the agent waits).
STATE_POLL_INTERVAL_S = 0.5
# Consumer-lag and state gauges are refreshed this often (each refresh asks the broker for the
# input partitions' end offsets), at most GAUGE_TIMEOUT_S each.
GAUGE_INTERVAL_S = 5.0
GAUGE_TIMEOUT_S = 5.0
EXIT_BATCH_FAILED = 3  # as the kafka engine's fatal errors: a supervisor restarts the worker
# aiokafka's timestamp types: 0 CreateTime, 1 LogAppendTime, -1 (or None) no timestamp.
NO_TIMESTAMP_MS = -1
# What a restart does about a batch whose acknowledgements hung (said in the watchdog's log line).
RESTART_REDELIVERS = "the restart re-delivers the batch's inputs (at least once) from the committed offsets"
# The engine contract's clauses this engine does not meet, named in its start line (docs/engines.md).
GAPS = "no transaction metrics (Faust's own offset commits and transactions are not counted)"


def check_settings(settings: Settings) -> None:
    """Refuse settings the Faust engine cannot honour, before anything connects."""
    if settings.workers > 1:
        raise StartupError(
            "--workers starts kafka-engine processes; scale the Faust engine by starting more workers"
        )
    check_promises(settings)
    broker_credentials(settings.kafka)  # refuses librdkafka properties aiokafka would not apply


def check_promises(settings: Settings) -> None:
    """Refuse a Faust start that weakens a promise the operator has not acknowledged."""
    if settings.faust_processing_guarantee == "at_least_once" and "P8" not in settings.faust_accepted_gaps:
        raise StartupError(
            "the Faust engine with faust_processing_guarantee=at_least_once re-delivers after a crash "
            "(promise P8 does not hold: forwarded and blocked records may be duplicated, never lost); "
            "acknowledge with faust_accepted_gaps: [P8] (env PARTNER_GUARD_FAUST_ACCEPTED_GAPS=P8), "
            "or set faust_processing_guarantee=exactly_once on a broker with aiokafka transactions"
        )


def consumer_lag(
    ends: Mapping[tuple[str, int], int | None],
    positions: Mapping[tuple[str, int], int | None],
    decided: Mapping[tuple[str, int], int],
) -> dict[tuple[str, int], int]:
    """Input records not yet decided, per partition.

    The end is the larger of the listed end offset and the consumer's fetch position (it has
    fetched that far, so the log is at least that long: the embedded broker lists the base
    offset of the last record batch + 1, short of the true end); from it is subtracted the next
    offset the guard will decide there (`decided`), or the fetch position where it has decided
    nothing yet. A partition whose end or position is unknown (None or negative) is left out.
    """
    lag = {}
    for partition, listed in ends.items():
        position = positions.get(partition)
        if position is None or position < 0:
            continue
        end = max(position, listed if listed is not None else -1)
        lag[partition] = max(0, end - decided.get(partition, position))
    return lag


def _timestamp_ms(timestamp: float | None, timestamp_type: int | None) -> int | None:
    """Faust's float seconds back to the record's epoch milliseconds (exact for ms values)."""
    if timestamp is None or timestamp_type in (None, NO_TIMESTAMP_MS) or timestamp < 0:
        return None
    return round(timestamp * 1000)


class FaustGuard:
    """One guard instance as a Faust app: `app` is what `faust worker` runs."""

    def __init__(self, setup: GuardSetup, metrics: GuardMetrics | None = None) -> None:
        check_settings(setup.settings)
        s = self.settings = setup.settings
        self.ruleset = setup.ruleset
        self.metrics = metrics or GuardMetrics()
        self.readiness = Readiness(self.metrics.ready)
        self.stopping = False
        credentials = broker_credentials(s.kafka)
        self.kafka_base: dict[str, Any] = kafka_client_config(s)
        # A batch whose sends the broker has not acknowledged `transaction_call_timeout_ms` + 10 s
        # after they were handed over is hung: the watchdog ends the worker (exit 4), as the
        # kafka engine's hung calls do.
        retry = RetryPolicy.configured(s.transaction_call_timeout_ms, self.kafka_base)
        self.hung_after_s = retry.hung_after_s
        self.watchdog = CallWatchdog(functools.partial(exit_hung, restart=RESTART_REDELIVERS))
        # /healthz's silence limit outlasts the longest watched wait and one batch's registry lookups.
        self.heartbeat = Heartbeat(
            max(
                liveness_limit_s(retry, s.state_catchup_timeout_ms / 1000),
                registry_wait_per_batch_s(s) + LIVENESS_MARGIN_S,
            )
        )
        self.fault = BeforeCommitFault.from_env()  # inert unless a reliability test arms it
        self._watch: BrokerWatch | None = None
        self.state = GuardState(s, self.kafka_base, self.metrics)
        self.decider = RecordDecider(s, setup.ruleset, setup.payload, self.state, self.heartbeat.beat)
        self.metrics.registry_open.set_function(self.decider.registry_open)
        self._state_lock = asyncio.Lock()
        self._loaded = False
        self._last_gauges = 0.0
        self._in_batch = False  # while a batch runs, only the batch beats the heartbeat
        self._next_offsets: dict[tuple[str, int], int] = {}  # per input partition, after the last batch
        session_s = s.session_timeout_ms / 1000
        self.app = faust.App(
            s.group_id,
            broker=[f"kafka://{server.strip()}" for server in s.bootstrap_servers.split(",")],
            broker_credentials=credentials,
            processing_guarantee=s.faust_processing_guarantee,
            web_enabled=False,  # /metrics, /healthz, /readyz come from the guard's own server
            store="memory://",
            datadir=Path(tempfile.gettempdir()) / f"partner-guard-faust-{s.group_id}",  # no tables kept
            autodiscover=False,
            topic_disable_leader=True,
            topic_allow_declare=False,  # `create_topics` creates them, the state topics compacted
            topic_partitions=s.partitions,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=session_s,
            broker_heartbeat_interval=max(0.5, session_s / 6),
            broker_commit_interval=COMMIT_INTERVAL_S,
            producer_linger=0.005,
            stream_wait_empty=True,  # SIGTERM: the taken batches finish and commit before the worker stops
        )
        self.inputs = self.app.topic(*s.input_topics, key_serializer="raw", value_serializer="raw")
        self.app.agent(self.inputs, name=AGENT_NAME)(self._agent)
        self.app.task(self._start)
        self.app.timer(STATE_POLL_INTERVAL_S)(self._keep_state_current)

    # -- lifecycle -------------------------------------------------------------------------

    def create_topics(self) -> None:
        """`create_topics`: create missing topics before the worker subscribes."""
        s = self.settings
        if s.create_topics:
            ensure_topics(
                self.kafka_base,
                [*s.input_topics, *self.decider.topic_by_partner.values(), s.blocked_topic],
                [s.consent_topic, s.signup_status_topic],
                s.partitions,
            )

    async def _start(self) -> None:
        """At worker start: the metrics endpoint, the broker watch and the ruleset info."""
        s = self.settings
        partners = ",".join(self.ruleset.partners)
        self.metrics.ruleset.info({"digest": self.ruleset.digest, "partners": partners})
        serve_http(
            self.metrics, s.metrics_host, s.metrics_port, self.readiness.is_ready, self.heartbeat.alive
        )
        self._watch = BrokerWatch(self.kafka_base, self.readiness).start()

    async def _load_state(self) -> None:
        async with self._state_lock:
            await asyncio.to_thread(self.state.load, lambda: self.stopping, self.heartbeat.beat)
        self._loaded = True
        self.readiness.set_deciding(True)
        log.info(
            "ready: ruleset %s, partners %s, input topics %s, state %d consent entries and "
            "%d sign-up statuses (faust engine, %s; gaps: %s)",
            self.ruleset.digest,
            list(self.ruleset.partners),
            self.settings.input_topics,
            len(self.state.consent),
            len(self.state.signup_status),
            self.settings.faust_processing_guarantee,
            GAPS,
        )

    async def _keep_state_current(self) -> None:
        """Between batches: apply new state records, beat, refresh the gauges.

        Beats only while no batch runs: a batch beats for itself, so a batch stuck outside the
        watched sends (the state catch-up) turns `/healthz` 503 as the kafka engine's loop does.
        """
        if not self._loaded or self.stopping:
            return
        if not self._in_batch:
            self.heartbeat.beat()
        async with self._state_lock:
            await asyncio.to_thread(self.state.poll)
        if time.monotonic() - self._last_gauges > GAUGE_INTERVAL_S:
            self._last_gauges = time.monotonic()
            self.state.update_gauges()
            await self._update_consumer_lag()

    async def _update_consumer_lag(self) -> None:
        """`partner_guard_consumer_lag_records` for the assigned input partitions."""
        consumer = self.app.consumer
        inputs = set(self.settings.input_topics)
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic in inputs]
            if not assigned:
                return
            ends = await asyncio.wait_for(consumer.highwaters(*assigned), GAUGE_TIMEOUT_S)
            positions = {
                (tp.topic, tp.partition): await asyncio.wait_for(consumer.position(tp), GAUGE_TIMEOUT_S)
                for tp in assigned
            }
            listed = {(tp.topic, tp.partition): ends.get(tp) for tp in assigned}
            for revoked in self._next_offsets.keys() - positions.keys():  # another worker's now
                del self._next_offsets[revoked]
            for (topic, partition), lag in consumer_lag(listed, positions, self._next_offsets).items():
                self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        except Exception as exc:  # a metric, never a reason to stop
            log.debug("consumer lag not refreshed: %s", type(exc).__name__)

    # -- the agent ---------------------------------------------------------------------------

    async def _agent(self, stream: StreamT[bytes]) -> None:
        """Load the state, then decide batch after batch."""
        s = self.settings
        try:
            await self._load_state()
            assert isinstance(stream, faust.Stream)  # take_events is not on the StreamT interface
            async for events in stream.take_events(s.batch_size, within=s.batch_timeout_ms / 1000):
                try:
                    await self._process_batch(events)
                except Exception as exc:
                    # Faust acknowledges a batch's events even when its body raised, and would
                    # commit them: exit before anything commits, so a restart re-delivers them.
                    log.error("batch failed (%s): exiting without committing it", type(exc).__name__)
                    os._exit(EXIT_BATCH_FAILED)
        finally:  # stopping (or crashing): not ready, and a state load in progress gives up
            self.stopping = True
            self.readiness.set_deciding(False)
            if self._watch is not None:
                self._watch.stop()
            async with self._state_lock:  # no poll or catch-up runs while the state closes
                with self.watchdog.watch("state close", self.hung_after_s):
                    self.state.close()
            log.info("stopped")

    async def _process_batch(self, events: Sequence[EventT[Any]]) -> None:
        """Decide a batch; it is acknowledged (committable) once every output was sent."""
        self._in_batch = True
        try:
            await self._decide_and_send(events)
        finally:
            self._in_batch = False

    async def _decide_and_send(self, events: Sequence[EventT[Any]]) -> None:
        s = self.settings
        started = time.monotonic()
        self.heartbeat.beat()
        async with self._state_lock:  # P9: caught up after the batch was fetched
            stale = await asyncio.to_thread(self.state.catch_up_before_batch, time.monotonic())
        tally = BatchTally()
        self.decider.start_batch()
        outputs: list[tuple[str, bytes, bytes | None, Headers | None, str | None]] = []
        for event in events:
            message = event.message
            transactional_id = self._transactional_id(message.topic, message.partition)

            def sink(
                topic: str,
                value: bytes,
                key: bytes | None,
                headers: Headers | None,
                tid: str | None = transactional_id,
            ) -> None:
                outputs.append((topic, value, key, headers, tid))

            source = SourceRef(
                message.topic,
                message.partition,
                message.offset,
                _timestamp_ms(message.timestamp, message.timestamp_type),
                message.key,
                s.topic_format(message.topic),
            )
            self.decider.emit(message.value, source, stale, tally, sink)
        self.heartbeat.beat()
        with self.watchdog.watch("produce: acknowledgements", self.hung_after_s):  # hung: exit 4
            await self._send(outputs)
        tally.apply(self.metrics, time.monotonic() - started)
        self._decided(event.message for event in events)

    async def _send(self, outputs: list[tuple[str, bytes, bytes | None, Headers | None, str | None]]) -> None:
        """Hand every output to Faust's producer and wait until the broker acknowledged them all."""
        sent: list[Awaitable[Any]] = []
        producer = self.app.producer
        for topic, value, key, headers, tid in outputs:
            sent.append(
                await producer.send(topic, key, value, None, None, headers, transactional_id=tid)  # type: ignore[arg-type]
            )
        self.fault.before_commit()  # inert unless a reliability test arms it
        if self.fault.hanging.is_set():  # `hang@N`: the acknowledgements never arrive
            log.warning("injected fault: the batch's acknowledgements never arrive")
            await asyncio.Event().wait()
        await asyncio.gather(*sent)

    def _decided(self, messages: Iterable[Any]) -> None:
        """Remember the next offset to decide per input partition (the consumer-lag gauge's)."""
        for message in messages:
            key = (message.topic, message.partition)
            self._next_offsets[key] = max(self._next_offsets.get(key, 0), message.offset + 1)

    def _transactional_id(self, topic: str, partition: int) -> str | None:
        """exactly_once: the id of the producer whose transaction commits this input partition."""
        if not self.app.in_transaction:
            return None
        group = self.app.assignor.group_for_topic(topic)
        return f"{self.app.conf.id}-{group}-{partition}"


def run_worker(setup: GuardSetup) -> int:
    """Run the Faust worker in this process until SIGTERM/SIGINT; returns the exit code."""
    from streams.runtime.ops.logs import JsonFormatter

    guard = FaustGuard(setup)
    guard.create_topics()
    logging_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
    }
    worker = faust.Worker(guard.app, loglevel="INFO", logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def __getattr__(name: str) -> Any:
    """`faust -A streams.engines.faust_app` asks for `app`: build it from the settings."""
    if name != "app":
        raise AttributeError(name)
    import sys

    from streams.runtime.ops.startup import prepare

    config = os.environ.get("PARTNER_GUARD_CONFIG")
    try:
        setup = prepare(Path(config) if config else None)
        guard = FaustGuard(setup)
        guard.create_topics()
    except RefusalError as exc:
        print(exc.report(), file=sys.stderr)
        raise SystemExit(exitcodes.REFUSED) from None
    for notice in setup.notices:
        print(notice, file=sys.stderr)
    globals()["app"] = guard.app
    return guard.app
