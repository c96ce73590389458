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
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import faust
from faust.types import EventT, StreamT

from streams import exitcodes
from streams.core.errors import RefusalError
from streams.engines.faust_auth import broker_credentials
from streams.runtime.config import Settings
from streams.runtime.formats.records import SourceRef
from streams.runtime.kafka.io import Headers
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.ops.broker_watch import BrokerWatch, Readiness
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
GAUGE_INTERVAL_S = 5.0
EXIT_BATCH_FAILED = 3  # as the kafka engine's fatal errors: a supervisor restarts the worker
# aiokafka's timestamp types: 0 CreateTime, 1 LogAppendTime, -1 (or None) no timestamp.
NO_TIMESTAMP_MS = -1


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
        self.heartbeat = Heartbeat()
        self.readiness = Readiness(self.metrics.ready)
        self.stopping = False
        credentials = broker_credentials(s.kafka)
        self.kafka_base: dict[str, Any] = kafka_client_config(s)
        self._watch: BrokerWatch | None = None
        self.state = GuardState(s, self.kafka_base, self.metrics)
        self.decider = RecordDecider(s, setup.ruleset, setup.payload, self.state)
        self._state_lock = asyncio.Lock()
        self._loaded = False
        self._last_gauges = 0.0
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
            "%d sign-up statuses (faust engine, %s)",
            self.ruleset.digest,
            list(self.ruleset.partners),
            self.settings.input_topics,
            len(self.state.consent),
            len(self.state.signup_status),
            self.settings.faust_processing_guarantee,
        )

    async def _keep_state_current(self) -> None:
        """Between batches: apply new state records, beat, refresh the gauges."""
        if not self._loaded or self.stopping:
            return
        self.heartbeat.beat()
        async with self._state_lock:
            await asyncio.to_thread(self.state.reader.poll)
        if time.monotonic() - self._last_gauges > GAUGE_INTERVAL_S:
            self._last_gauges = time.monotonic()
            self.state.update_gauges()

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
                self.state.close()
            log.info("stopped")

    async def _process_batch(self, events: Sequence[EventT[Any]]) -> None:
        """Decide a batch; it is acknowledged (committable) once every output was sent."""
        s = self.settings
        started = time.monotonic()
        self.heartbeat.beat()
        async with self._state_lock:  # P9: caught up after the batch was fetched
            stale = await asyncio.to_thread(self.state.catch_up_before_batch, time.monotonic())
        tally = BatchTally()
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
        sent: list[Awaitable[Any]] = []
        producer = self.app.producer
        for topic, value, key, headers, tid in outputs:
            sent.append(
                await producer.send(topic, key, value, None, None, headers, transactional_id=tid)  # type: ignore[arg-type]
            )
        await asyncio.gather(*sent)
        tally.apply(self.metrics, time.monotonic() - started)

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
