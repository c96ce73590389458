"""Reads the compacted state topics into the tables and keeps them current.

Read-your-revocation (P9): before a batch of events is decided, the tables are caught up
to the end offsets looked up *after* the batch was fetched. A consent record acknowledged
before an event was produced is then applied before that event is decided.

Measured on the embedded broker (Tansu 0.6): ListOffsets(latest) answers the base offset
of the last record batch + 1, not the true end. Reaching that offset delivers the whole
last batch (fetches return whole batches), so after reaching the targets the reader also
drains every record already fetched; the true end seen in fetch responses is used too.

The state topics are read `read_committed`, so a grant from a rolled-back transaction never
applies (on a broker that implements it: Tansu 0.6 does not hide aborted records). Every
`METADATA_REFRESH_S` the reader looks the topics up again and reads partitions added
while running from their beginning.

A state topic deleted and recreated under the running guard (or truncated) no longer holds
what the tables were read from: resuming at the applied positions would skip everything the
new topic holds up to them (a denial among it). The reader raises `StateTopicChangedError`
when a fetch reports a partition ending below its applied position, when a partition's
records start again below it (a broker that resets an out-of-range position), or when the
topic id changed (checked every `METADATA_REFRESH_S`); the caller then reads the state again
from the beginning before it decides anything more.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata

from streams.core.errors import PartnerGuardError
from streams.runtime.kafka.io import records_in
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.state.layout import topic_ids

log = logging.getLogger(__name__)
Applier = Callable[[bytes | None, bytes | None], None]
Checkpointer = Callable[[dict[tuple[str, int], int]], None]
# More than any record batch a producer writes (librdkafka batch.num.messages defaults to 10000),
# small enough that a flood of state records cannot keep one catch-up from ending.
MAX_DRAIN = 20_000
# What `catch_up` reports when the end offsets cannot be looked up (broker unreachable): more
# than any lag bound, so the batch is decided as stale (fail closed) and the job carries on.
UNKNOWN_LAG = 1 << 62
# How often to look for partitions added to the state topics while running: often enough
# that a new partition's records apply within seconds, rare enough to cost nothing.
METADATA_REFRESH_S = 10.0


class StateTopicChangedError(PartnerGuardError, RuntimeError):
    """A state topic no longer holds what the tables were read from (recreated, truncated)."""


def state_consumer_config(kafka_config: dict[str, Any]) -> dict[str, Any]:
    """Consumer settings of the state reader: no group commits, committed records only."""
    return {
        # A catch-up waits for the fetch in flight; the embedded broker holds an empty fetch
        # for the whole fetch.wait.max.ms (default 500 ms), which under a steady stream of
        # consent changes stalled nearly every batch (measured by benchmarks/soak.py).
        "fetch.wait.max.ms": 50,
        **kafka_config,
        "group.id": f"partner-guard-state-{uuid.uuid4().hex[:12]}",  # never commits
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    }


def new_partitions(
    metadata: ClusterMetadata, topics: Iterable[str], known: Iterable[tuple[str, int]]
) -> list[TopicPartition]:
    """Partitions of `topics` in `metadata` that are not `known` yet, to read from the beginning."""
    seen = set(known)
    found = []
    for topic in topics:
        listed = metadata.topics.get(topic)
        if listed is None or listed.error is not None:
            continue
        for partition in sorted(listed.partitions):
            if (topic, partition) not in seen:
                found.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
    return found


class StateReader:
    """Assigns every partition of the state topics (no consumer group) and applies records.

    Its clients identify as `<client.id>-state` (broker logs, quotas, fault tests).
    """

    def __init__(
        self,
        kafka_config: dict[str, Any],
        appliers: dict[str, Applier],
        metrics: GuardMetrics,
        watermark_timeout_s: float = 5.0,
        metadata_refresh_s: float = METADATA_REFRESH_S,
        start_offsets: dict[tuple[str, int], int] | None = None,
        checkpoint: Checkpointer | None = None,
    ) -> None:
        """`start_offsets`: where a checkpointed store resumes (else the beginning);
        `checkpoint`: called with the positions after every applied chunk of records."""
        self._checkpoint = checkpoint
        kafka_config = {**kafka_config, "client.id": f"{kafka_config.get('client.id', 'rdkafka')}-state"}
        self._consumer = Consumer(state_consumer_config(kafka_config))
        self._admin = AdminClient(kafka_config)
        self._appliers = appliers
        self._metrics = metrics
        self._timeout = watermark_timeout_s
        self.positions: dict[tuple[str, int], int] = {}
        self.last_caught_up = 0.0
        self._refresh_s = metadata_refresh_s
        metadata = self._consumer.list_topics(timeout=watermark_timeout_s)
        for topic in appliers:
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                raise RuntimeError(f"state topic '{topic}' does not exist (use --create-topics)")
        partitions = new_partitions(metadata, appliers, ())
        self._topic_ids = self._ids()
        for tp in partitions:
            resume = (start_offsets or {}).get((tp.topic, tp.partition))
            if resume is not None:
                tp.offset = resume
        self.positions = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in partitions}
        self._consumer.assign(partitions)
        self._refreshed_at = time.monotonic()

    def _ids(self) -> dict[str, str | None]:
        """The state topics' ids now (empty when the broker does not answer)."""
        try:
            return topic_ids(self._admin, list(self._appliers), self._timeout)
        except KafkaException:
            return {}

    def _check_topic_ids(self) -> None:
        for topic, now in self._ids().items():
            before = self._topic_ids.get(topic)
            if before is not None and now is not None and now != before:
                raise StateTopicChangedError(f"state topic {topic} was deleted and recreated (new topic id)")

    def _pick_up_new_partitions(self) -> None:
        """Assign partitions added to the state topics since the last look (from the start), and
        check that the topics are still the ones the tables were read from."""
        if time.monotonic() - self._refreshed_at < self._refresh_s:
            return
        self._refreshed_at = time.monotonic()
        self._check_topic_ids()
        try:
            metadata = self._consumer.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            log.warning("state topic metadata refresh failed: %s", exc.args[0].str())
            return
        added = new_partitions(metadata, self._appliers, self.positions)
        if added:
            log.info("state topics: reading %d new partition(s)", len(added))
            self._consumer.incremental_assign(added)
            for tp in added:
                self.positions[(tp.topic, tp.partition)] = 0

    def _apply(self, messages: list[Message]) -> int:
        applied = 0
        for message, topic, partition, offset in records_in(messages, log, "state topic"):
            if offset < self.positions[(topic, partition)]:
                raise StateTopicChangedError(
                    f"state topic {topic} partition {partition} starts again at offset {offset}, "
                    f"below the applied position {self.positions[(topic, partition)]}"
                )
            self._appliers[topic](message.key(), message.value())
            self.positions[(topic, partition)] = offset + 1
            applied += 1
        if applied and self._checkpoint is not None:
            self._checkpoint(self.positions)
        return applied

    def _targets(self) -> dict[tuple[str, int], int] | None:
        """End offsets of every state partition: one ListOffsets request for all of them.

        (The admin client's own connection answers in well under a millisecond; the
        consumer's `get_watermark_offsets` queues behind its long-poll fetch, ~0.5 s.)
        None when the broker does not answer: a timed-out ListOffsets raises, or (measured,
        confluent-kafka 2.16) resolves to offset -1001, which must not pass for "caught up".
        """
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in self.positions}  # type: ignore[no-untyped-call]
        targets = {}
        try:
            futures = self._admin.list_offsets(request, request_timeout=self._timeout)
            for tp, future in futures.items():
                listed = future.result().offset
                if listed < 0:
                    log.warning(
                        "state end offsets unavailable, deciding as stale: no answer for %s", tp.topic
                    )
                    return None
                _, fetched = self._consumer.get_watermark_offsets(tp, cached=True)
                applied = self.positions[(tp.topic, tp.partition)]
                if 0 <= fetched < applied:
                    raise StateTopicChangedError(
                        f"state topic {tp.topic} partition {tp.partition} ends at {fetched}, "
                        f"below the applied position {applied}"
                    )
                targets[(tp.topic, tp.partition)] = max(listed, fetched if fetched > 0 else 0)
        except KafkaException as exc:
            log.warning("state end offsets unavailable, deciding as stale: %s", exc.args[0].str())
            return None
        return targets

    def _step_over_control_records(self, targets: dict[tuple[str, int], int]) -> None:
        """Count a lagging partition's position as the consumer's own, which steps over the
        commit markers of transactions: a topic written in transactions (the forwarded topic)
        ends with one, which is never delivered as a record. (A local call, no request.)"""
        behind = [TopicPartition(t, p) for (t, p), end in targets.items() if self.positions[(t, p)] < end]
        if not behind:
            return
        try:
            for tp in self._consumer.position(behind):
                if tp.offset > self.positions[(tp.topic, tp.partition)]:
                    self.positions[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.warning("state positions unavailable: %s", exc.args[0].str())

    def lag(self, targets: dict[tuple[str, int], int]) -> int:
        """Records below the targets not yet applied."""
        return sum(max(0, end - self.positions[key]) for key, end in targets.items())

    def catch_up(self, timeout_s: float) -> int:
        """Apply records up to the current end offsets; returns the records still missing."""
        deadline = time.monotonic() + timeout_s
        self._pick_up_new_partitions()
        targets = self._targets()
        if targets is None:
            return UNKNOWN_LAG
        while self.lag(targets) > 0 and time.monotonic() < deadline:
            self._apply(self._consumer.consume(5000, 0.05))
        drained = 0  # the rest of the last record batch is already fetched: apply it, boundedly
        while drained < MAX_DRAIN and (applied := self._apply(self._consumer.consume(5000, 0))):
            drained += applied
        self._step_over_control_records(targets)
        missing = self.lag(targets)
        by_topic: dict[str, int] = {}
        for (topic, partition), end in targets.items():
            by_topic[topic] = by_topic.get(topic, 0) + max(0, end - self.positions[(topic, partition)])
        for topic, value in by_topic.items():
            self._metrics.state_lag.labels(topic).set(value)
        if missing == 0:
            self.last_caught_up = time.monotonic()
        return missing

    def load(self, round_timeout_s: float, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Catch up round after round (`round_timeout_s` each) until nothing is left to read,
        or until `keep_going` (asked before every round) says to stop."""
        while keep_going():
            if self.catch_up(round_timeout_s) == 0:
                return

    def poll(self) -> int:
        """Apply whatever has arrived, without waiting."""
        return self._apply(self._consumer.consume(5000, 0))

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
