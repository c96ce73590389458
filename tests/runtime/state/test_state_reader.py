"""State reader: committed records only, partitions added while running."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.admin._metadata import ClusterMetadata, PartitionMetadata, TopicMetadata

from streams.runtime.state.reader import new_partitions, state_consumer_config


def test_state_topics_are_read_committed() -> None:
    config = state_consumer_config({"bootstrap.servers": "x:9092", "isolation.level": "read_uncommitted"})
    assert config["isolation.level"] == "read_committed" and config["enable.auto.commit"] is False


def _metadata(partitions: dict[str, int]) -> ClusterMetadata:
    metadata = ClusterMetadata()
    for name, count in partitions.items():
        topic = TopicMetadata()
        topic.topic = name
        topic.partitions = {p: PartitionMetadata() for p in range(count)}
        metadata.topics[name] = topic
    return metadata


def test_new_partitions_are_read_from_the_beginning() -> None:
    metadata = _metadata({"privacy.consent": 3, "member.signup-status": 1, "other": 4})
    known = [("privacy.consent", 0), ("member.signup-status", 0)]
    added = new_partitions(metadata, ["privacy.consent", "member.signup-status", "missing"], known)
    assert [(tp.topic, tp.partition, tp.offset) for tp in added] == [
        ("privacy.consent", 1, OFFSET_BEGINNING),
        ("privacy.consent", 2, OFFSET_BEGINNING),
    ]
