"""The consumer group as a whole: its lag on every input partition, whoever owns it.

`partner_guard_group_lag_records{topic,partition}` = the partition's end offset minus the
group's committed offset (its log start when the group has committed nothing there). It is
looked up through the admin API (ListOffsets, OffsetFetch, DescribeGroups), so every instance
reports every partition, including partitions no instance owns: a stalled group shows on the
dashboard even when each instance's own consumer lag reads 0. (Take `max` over instances and
workers, never `sum`.)

The same view answers readiness for an instance that owns no partition: "the group has nothing
for it" when every input partition is owned by a member (where the broker lists members and
their assignments), or else (the embedded broker lists no members) when no partition with
records waiting has gone `STALL_AFTER_S` without its committed offset moving. An input topic
that does not exist, or has no partitions, is never "nothing for it".

Measured on the embedded broker (Tansu 0.6): ListOffsets(latest) is the base offset of the
last record batch + 1, so the gauge can read up to one producer batch low there; it never
reads a waiting batch as 0. After the broker restarted, an admin client's group requests
(OffsetFetch, DescribeGroups) time out for good while its metadata requests succeed: the
client is therefore replaced after every failed lookup and every lost broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from prometheus_client import Gauge

log = logging.getLogger(__name__)
TopicPart = tuple[str, int]
# Records waiting on a partition whose committed offset has not moved for this long: the group
# is not consuming it. Longer than any healthy batch's commit (the transaction timeout is 60 s
# at most, a batch normally commits in milliseconds), short enough to show a stall quickly.
STALL_AFTER_S = 30.0
# How often the view is looked up (a metadata request and three admin requests).
GROUP_INTERVAL_S = 5.0
REQUEST_TIMEOUT_S = 5.0
ViewSink = Callable[["GroupView | None"], None]


@dataclass(frozen=True)
class GroupView:
    """The group on the input topics at one moment."""

    partitions: frozenset[TopicPart]  # every partition the input topics have now
    lag: Mapping[TopicPart, int] = field(default_factory=dict)
    stalled: frozenset[TopicPart] = frozenset()  # records waiting, committed offset not moving
    unowned: frozenset[TopicPart] | None = None  # None: the broker lists no members

    def has_nothing_for_an_idle_member(self) -> bool:
        """An instance that owns no partition is not needed: no partition waits for it."""
        if not self.partitions:
            return False
        if self.unowned is not None:
            return not self.unowned
        return not self.stalled


@dataclass
class _Progress:
    committed: int
    since: float


def assess(
    bounds: Mapping[TopicPart, tuple[int, int]],
    committed: Mapping[TopicPart, int],
    progress: dict[TopicPart, _Progress],
    now: float,
    stall_after_s: float = STALL_AFTER_S,
) -> tuple[dict[TopicPart, int], frozenset[TopicPart]]:
    """Lag per partition and the stalled ones; `progress` (when each committed offset last
    moved) is updated in place. `committed` < 0 or absent: nothing committed (log start)."""
    lag: dict[TopicPart, int] = {}
    stalled = set()
    for tp, (low, end) in bounds.items():
        found = committed.get(tp, -1)
        position = found if found >= 0 else low
        lag[tp] = max(0, end - position)
        seen = progress.get(tp)
        if seen is None or seen.committed != position:
            progress[tp] = seen = _Progress(position, now)
        if lag[tp] > 0 and now - seen.since >= stall_after_s:
            stalled.add(tp)
    for tp in [tp for tp in progress if tp not in bounds]:
        del progress[tp]
    return lag, frozenset(stalled)


def input_partitions(metadata: ClusterMetadata, topics: Iterable[str]) -> frozenset[TopicPart]:
    """Every partition of the input topics that exist (a missing topic has none)."""
    found: set[TopicPart] = set()
    for topic in topics:
        listed = metadata.topics.get(topic)
        if listed is not None and listed.error is None:
            found.update((topic, p) for p in listed.partitions)
    return frozenset(found)


class GroupLag:
    """Looks the group's view up every `GROUP_INTERVAL_S` on a daemon thread of its own, exports
    the lag gauge, and hands every view to `on_view` (None when the broker did not answer: what
    the group was before the broker was lost says nothing about after)."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        group: str,
        topics: list[str],
        gauge: Gauge,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kafka_config = kafka_config
        self._client: AdminClient | None = None
        self._members_listed = True  # until DescribeGroups fails on this client
        self._group = group
        self._topics = topics
        self._gauge = gauge
        self._clock = clock
        self._progress: dict[TopicPart, _Progress] = {}
        self._exported: set[TopicPart] = set()
        self._failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_view: ViewSink) -> GroupLag:
        """Look the group up every `GROUP_INTERVAL_S` until `stop`."""

        def loop() -> None:
            while True:
                try:
                    on_view(self.look())
                    if self._client is not None:
                        self._client.poll(0)  # serves queued librdkafka log lines
                except Exception as exc:  # a bug here must not freeze readiness silently
                    log.error("group view failed: %s", type(exc).__name__)
                if self._stop.wait(GROUP_INTERVAL_S):
                    return

        self._thread = threading.Thread(target=loop, name="group-lag", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking (returns without waiting for a lookup in flight)."""
        self._stop.set()

    def look(self) -> GroupView | None:
        """The group's view now; None (and a new client next time) when the broker is lost."""
        try:
            metadata = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S)
        except KafkaException:
            self.forget()
            return None
        return self.refresh(metadata)

    def _unavailable(self, why: str) -> None:
        """Log a failed lookup once per distinct reason (the gauge keeps its last values)."""
        if why != self._failure:
            log.warning("group lag unavailable: %s", why)
        self._failure = why

    @property
    def _admin(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient(self._kafka_config)
            self._members_listed = True
        return self._client

    def forget(self) -> None:
        """Look up with a new client next time (the broker was lost)."""
        self._client = None

    def refresh(self, metadata: ClusterMetadata) -> GroupView | None:
        """The group's view now, and the gauge set from it; None when the broker did not answer."""
        partitions = input_partitions(metadata, self._topics)
        try:
            bounds = self._bounds(partitions)
            committed = self._committed(partitions)
        except KafkaException as exc:
            self._unavailable(exc.args[0].str())
            self._client = None  # a client whose group requests time out stays that way
            return None
        unowned = None  # members unknown: judged by progress instead
        if self._members_listed:
            try:
                unowned = self._unowned(partitions)
            except KafkaException:
                self._members_listed = False  # not asked again on this client
        self._failure = None
        lag, stalled = assess(bounds, committed, self._progress, self._clock())
        for tp in self._exported - set(lag):
            self._gauge.remove(tp[0], str(tp[1]))  # a partition gone with its topic
        for (topic, partition), value in lag.items():
            self._gauge.labels(topic, str(partition)).set(value)
        self._exported = set(lag)
        return GroupView(partitions, lag, stalled, unowned)

    def _bounds(self, partitions: frozenset[TopicPart]) -> dict[TopicPart, tuple[int, int]]:
        if not partitions:
            return {}
        lows = self._listed(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        ends = self._listed(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return {
            tp: (lows[tp], ends[tp]) for tp in partitions if lows.get(tp, -1) >= 0 and ends.get(tp, -1) >= 0
        }

    def _listed(self, partitions: frozenset[TopicPart], spec: OffsetSpec) -> dict[TopicPart, int]:
        request = {TopicPartition(t, p): spec for t, p in partitions}
        futures = self._admin.list_offsets(request, request_timeout=REQUEST_TIMEOUT_S)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def _committed(self, partitions: frozenset[TopicPart]) -> dict[TopicPart, int]:
        if not partitions:
            return {}
        request = ConsumerGroupTopicPartitions(self._group, [TopicPartition(t, p) for t, p in partitions])
        futures = self._admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)
        found: dict[TopicPart, int] = {}
        for future in futures.values():
            for tp in future.result().topic_partitions or []:
                found[(tp.topic, tp.partition)] = tp.offset
        return found

    def _unowned(self, partitions: frozenset[TopicPart]) -> frozenset[TopicPart] | None:
        """Input partitions no member owns; None when the broker lists no members (Tansu 0.6)."""
        futures = self._admin.describe_consumer_groups([self._group], request_timeout=REQUEST_TIMEOUT_S)
        members = [m for f in futures.values() for m in (f.result().members or [])]
        if not members:
            return None
        owned = {
            (tp.topic, tp.partition)
            for m in members
            if m.assignment is not None
            for tp in m.assignment.topic_partitions
        }
        return partitions - owned
