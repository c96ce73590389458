"""Readiness that follows the broker: `/readyz` and `partner_guard_ready` drop when it is gone.

A daemon thread asks the bootstrap servers for metadata every `PROBE_INTERVAL_S` through
its own admin client, waiting at most `PROBE_TIMEOUT_S`. `FAILED_PROBES_NOT_READY`
failed probes in a row mark the job not ready (and log one warning), so one slow answer
does not flap readiness; the next successful probe marks it ready again (and logs that).
Readiness therefore follows a lost broker within
FAILED_PROBES_NOT_READY × (PROBE_INTERVAL_S + PROBE_TIMEOUT_S) = 10 s, and a returning one
within PROBE_INTERVAL_S + PROBE_TIMEOUT_S plus librdkafka's reconnect backoff
(`reconnect.backoff.max.ms`, 10 s by default).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0
FAILED_PROBES_NOT_READY = 2


class Readiness:
    """Ready = the state is loaded and the job is deciding, and the broker answers."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._deciding = False
        self._broker_ok = True
        self._lock = threading.Lock()

    def is_ready(self) -> bool:
        """What `/readyz` reports."""
        with self._lock:
            return self._deciding and self._broker_ok

    def set_deciding(self, deciding: bool) -> None:
        """The job loaded its state and runs its loop (or stopped)."""
        with self._lock:
            self._deciding = deciding
            self._gauge.set(int(self._deciding and self._broker_ok))

    def set_broker_ok(self, ok: bool) -> None:
        """The last broker probe's outcome; logs when it changes."""
        with self._lock:
            changed = ok != self._broker_ok
            self._broker_ok = ok
            self._gauge.set(int(self._deciding and self._broker_ok))
        if changed and ok:
            log.info("broker reachable again: ready")
        elif changed:
            log.warning("broker unreachable: not ready until it answers again")


class BrokerWatch:
    """Probes the broker in a daemon thread and feeds `Readiness`."""

    def __init__(self, kafka_config: dict[str, Any], readiness: Readiness) -> None:
        self._admin = AdminClient(kafka_config)
        self._readiness = readiness
        self._stop = threading.Event()
        self._failed_in_a_row = 0
        self._thread = threading.Thread(target=self._loop, name="broker-watch", daemon=True)

    def start(self) -> BrokerWatch:
        """Start probing."""
        self._thread.start()
        return self

    def probe(self) -> bool:
        """One metadata request; True when a broker answered."""
        try:
            self._admin.list_topics(timeout=PROBE_TIMEOUT_S)
            return True
        except KafkaException:
            return False

    def record_probe(self, answered: bool) -> None:
        """Feed one probe's outcome: not ready after FAILED_PROBES_NOT_READY failures in a row."""
        self._failed_in_a_row = 0 if answered else self._failed_in_a_row + 1
        self._readiness.set_broker_ok(self._failed_in_a_row < FAILED_PROBES_NOT_READY)

    def _loop(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            self.record_probe(self.probe())
            self._admin.poll(0)  # serves queued librdkafka log lines (they wait for a poll)

    def stop(self) -> None:
        """Stop probing (returns without waiting for a probe in flight)."""
        self._stop.set()
