"""Readiness that follows the broker and the group: `/readyz` and `partner_guard_ready`.

Ready = the state is loaded and the loop decides, the broker answers, and (for an engine that
reports its partitions, the kafka engine) this instance owns partitions, or the consumer group
has nothing for it (`group_lag.GroupView`): an instance left with no partitions while records
wait is not ready, whatever the reason (input topics recreated after it rejoined, a stuck
group).

A daemon thread asks the bootstrap servers for metadata every `PROBE_INTERVAL_S` through
its own admin client, waiting at most `PROBE_TIMEOUT_S`. `FAILED_PROBES_NOT_READY`
failed probes in a row mark the job not ready (and log one warning), so one slow answer
does not flap readiness; the next successful probe marks it ready again (and logs that).
Readiness therefore follows a lost broker within
FAILED_PROBES_NOT_READY × (PROBE_INTERVAL_S + PROBE_TIMEOUT_S) = 10 s, and a returning one
within PROBE_INTERVAL_S + PROBE_TIMEOUT_S plus librdkafka's reconnect backoff
(`reconnect.backoff.max.ms`, 10 s by default). The group's view comes from
`group_lag.GroupLag`, on a thread of its own so that slow group lookups never delay a probe.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from streams.runtime.ops.group_lag import GroupView, TopicPart

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0
FAILED_PROBES_NOT_READY = 2


class Readiness:
    """Ready = the state is loaded and the job is deciding, the broker answers, and (when
    `track_partitions`) this instance owns partitions or the group has nothing for it."""

    def __init__(self, gauge: Gauge, track_partitions: bool = False) -> None:
        self._gauge = gauge
        self._deciding = False
        self._broker_ok = True
        self._track = track_partitions
        self._owned: frozenset[TopicPart] = frozenset()
        self._group: GroupView | None = None
        self._consuming = not track_partitions
        self._lock = threading.Lock()

    def _ready(self) -> bool:
        return self._deciding and self._broker_ok and self._consuming

    def is_ready(self) -> bool:
        """What `/readyz` reports."""
        with self._lock:
            return self._ready()

    def set_deciding(self, deciding: bool) -> None:
        """The job loaded its state and runs its loop (or stopped)."""
        with self._lock:
            self._deciding = deciding
            self._gauge.set(int(self._ready()))

    def set_broker_ok(self, ok: bool) -> None:
        """The last broker probe's outcome; logs when it changes."""
        with self._lock:
            changed = ok != self._broker_ok
            self._broker_ok = ok
            self._gauge.set(int(self._ready()))
        if changed and ok:
            log.info("broker reachable again: ready")
        elif changed:
            log.warning("broker unreachable: not ready until it answers again")

    def set_owned(self, owned: frozenset[TopicPart]) -> None:
        """The input partitions this instance owns now (from its rebalance callbacks)."""
        with self._lock:
            self._owned = owned
            self._judge()

    def set_group(self, view: GroupView | None) -> None:
        """The group's latest view (from `GroupLag`); None: unknown (the broker was lost)."""
        with self._lock:
            self._group = view
            self._judge()

    def _judge(self) -> None:
        """Consuming = owns partitions, or the group has nothing for it (lock held)."""
        if not self._track:
            return
        if self._owned:
            consuming, why = True, ""
        elif self._group is None:
            consuming, why = False, "owns no input partition yet"
        elif not self._group.partitions:
            consuming, why = False, "owns no input partition: the input topics have none"
        else:
            consuming = self._group.has_nothing_for_an_idle_member()
            why = "owns no input partition while the group leaves records waiting on " + ", ".join(
                f"{t}[{p}]" for t, p in sorted(self._group.unowned or self._group.stalled)[:5]
            )
        changed = consuming != self._consuming
        self._consuming = consuming
        self._gauge.set(int(self._ready()))
        if changed and consuming:
            log.info("consuming: ready")
        elif changed and self._deciding:
            log.warning("not ready: this instance %s", why)


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
