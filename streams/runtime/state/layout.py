"""What the cluster says the state topics are now: what a disk store's checkpoint must match.

- `state_topic_layout`: the cluster id, and per state topic its partition count and topic id
  (DescribeTopics; None where the broker has none). A topic deleted and recreated under the
  same name gets a new id (measured on the embedded broker, Tansu 0.6, too).
- `partition_bounds`: each partition's log start and end offset. Measured on Tansu 0.6:
  ListOffsets(latest) answers the base offset of the last record batch + 1, short of the true
  end, while a fetch response carries the true high watermark. So where a saved offset lies
  past the listed end, one fetch at the listed end is made and its high watermark taken; a
  saved offset past even that is past the end. On Apache Kafka both answers agree.

Nothing here decides; `store.open_table_store` compares (`store.offsets_misfit`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from streams.runtime.state.store import (
    Bounds,
    BoundsLookup,
    StateTables,
    StateTopic,
    StoreTuning,
    open_state_tables,
)
from streams.runtime.state.tables import ConsentTable, SignupStatusTable

log = logging.getLogger(__name__)
# How long a start may spend learning the true end of partitions whose saved offset lies past
# the listed end (one fetch each, normally well under a second).
END_PROBE_TIMEOUT_S = 5.0
# Unknown bounds rebuild the store (hours for a big table): a broker that did not answer in
# time is asked again first.
BOUNDS_ATTEMPTS = 3
BOUNDS_RETRY_PAUSE_S = 1.0


def topic_ids(admin: AdminClient, topics: list[str], timeout_s: float) -> dict[str, str | None]:
    """The topic id of each topic that exists (None where the broker reports none)."""
    found: dict[str, str | None] = {}
    if not topics:
        return found
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            described = future.result()
        except KafkaException:
            continue  # missing: the reader refuses to start on it
        topic_id = str(described.topic_id) if described.topic_id is not None else None
        found[name] = topic_id if topic_id and topic_id != "AAAAAAAAAAAAAAAAAAAAAA" else None
    return found


def state_topic_layout(
    kafka_config: dict[str, Any], topics: list[str], timeout_s: float = 10.0
) -> tuple[str | None, dict[str, StateTopic]]:
    """The cluster id and each existing state topic as it is now (what a checkpoint is valid for)."""
    admin = AdminClient(kafka_config)
    metadata = admin.list_topics(timeout=timeout_s)
    existing = [t for t in topics if t in metadata.topics and metadata.topics[t].error is None]
    ids = topic_ids(admin, existing, timeout_s)
    layout = {t: StateTopic(t, len(metadata.topics[t].partitions), ids.get(t)) for t in existing}
    return metadata.cluster_id, layout


def _listed(
    admin: AdminClient, topic: str, partitions: list[int], spec: Any, timeout_s: float
) -> dict[int, int]:
    request = {TopicPartition(topic, p): spec for p in partitions}
    futures = admin.list_offsets(request, request_timeout=timeout_s)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


def fetched_ends(kafka_config: dict[str, Any], topic: str, listed: Mapping[int, int]) -> dict[int, int]:
    """The high watermark a fetch at each listed end reports (partitions that answer in time)."""
    consumer = Consumer(
        {
            "fetch.wait.max.ms": 50,
            **kafka_config,
            "group.id": f"partner-guard-probe-{uuid.uuid4().hex[:12]}",  # never commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    ends: dict[int, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, max(end, 0)) for p, end in listed.items()])
        deadline = time.monotonic() + END_PROBE_TIMEOUT_S
        while len(ends) < len(listed) and time.monotonic() < deadline:
            consumer.consume(500, 0.1)
            for partition in listed:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                if high >= 0:
                    ends[partition] = high
    finally:
        consumer.close()
    return ends


def partition_bounds(kafka_config: dict[str, Any], timeout_s: float = 10.0) -> BoundsLookup:
    """A `BoundsLookup` on the cluster (None when it does not answer: the store is rebuilt)."""
    admin = AdminClient(kafka_config)

    def listed(topic: str, partitions: list[int]) -> tuple[dict[int, int], dict[int, int]] | None:
        for attempt in range(1, BOUNDS_ATTEMPTS + 1):
            try:
                lows = _listed(admin, topic, partitions, OffsetSpec.earliest(), timeout_s)  # type: ignore[no-untyped-call]
                ends = _listed(admin, topic, partitions, OffsetSpec.latest(), timeout_s)  # type: ignore[no-untyped-call]
                return lows, ends
            except KafkaException as exc:
                log.warning(
                    "state topic %s: partition bounds unavailable (attempt %d of %d): %s",
                    topic,
                    attempt,
                    BOUNDS_ATTEMPTS,
                    exc.args[0].str(),
                )
            if attempt < BOUNDS_ATTEMPTS:
                time.sleep(BOUNDS_RETRY_PAUSE_S)
        return None

    def lookup(topic: str, saved: Mapping[int, int]) -> Bounds | None:
        partitions = sorted(saved)
        found = listed(topic, partitions)
        if found is None:
            return None
        lows, ends = found
        if any(offset < 0 for offset in (*lows.values(), *ends.values())):
            return None  # an unknown partition, or no answer (-1001)
        past = {p: ends[p] for p in partitions if saved[p] > ends[p]}
        if past:
            for partition, high in fetched_ends(kafka_config, topic, past).items():
                ends[partition] = max(ends[partition], high)
        return {p: (lows[p], ends[p]) for p in partitions}

    return lookup


def open_configured_tables(
    settings: Any, kafka_config: dict[str, Any], forwarded: bool = False
) -> StateTables:
    """The state tables the settings ask for (`state_store`, `state_dir`, tuning); with
    `forwarded`, the forwarded table too (opt-out notices on)."""
    if settings.state_store == "memory":
        return StateTables(ConsentTable(), SignupStatusTable())
    names = {"consent": settings.consent_topic, "signup_status": settings.signup_status_topic}
    if forwarded:
        names["forwarded"] = settings.forwarded_topic
    cluster_id, layout = state_topic_layout(kafka_config, list(names.values()))
    return open_state_tables(
        settings.state_store,
        Path(settings.state_dir),
        {table: layout.get(topic, StateTopic(topic, 0)) for table, topic in names.items()},
        cluster_id,
        StoreTuning(
            settings.state_cache_entries, settings.state_block_cache_mb, settings.state_write_buffer_mb
        ),
        partition_bounds(kafka_config),
    )
