"""Readiness that follows the broker: `/readyz` and `partner_guard_ready` drop when it is gone.

A daemon thread asks the bootstrap servers for metadata every `PROBE_INTERVAL_S` through
its own admin client, waiting at most `PROBE_TIMEOUT_S`. A failed probe marks the job
not ready (and logs one warning); the next successful one marks it ready again (and logs
that). So readiness follows a lost broker within PROBE_INTERVAL_S + PROBE_TIMEOUT_S
(≤ 5 s) and a returning one within the same bound plus librdkafka's reconnect backoff
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

    def _loop(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            self._readiness.set_broker_ok(self.probe())
            self._admin.poll(0)  # serves queued librdkafka log lines (they wait for a poll)

    def stop(self) -> None:
        """Stop probing (returns without waiting for a probe in flight)."""
        self._stop.set()
