"""`--create-topics`: create missing topics; the state topics compacted."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings

log = logging.getLogger(__name__)
COMPACT = {"cleanup.policy": "compact"}


def ensure_topics(
    kafka_config: dict[str, Any],
    plain: list[str],
    compacted: list[str],
    partitions: int,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AdminClient(kafka_config)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [NewTopic(t, partitions, 1) for t in dict.fromkeys(plain) if t not in existing]
    wanted += [NewTopic(t, 1, 1, config=COMPACT) for t in dict.fromkeys(compacted) if t not in existing]
    created = []
    for topic, future in admin.create_topics(wanted, operation_timeout=timeout_s).items() if wanted else []:
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    if created:
        log.info("created topics %s", sorted(created))
    return created


def guard_topic_layout(settings: Settings, ruleset: Ruleset) -> tuple[list[str], list[str]]:
    """(plain, compacted): every topic `run` reads or writes under these settings and rules.

    While some rule sends opt-out notices: every such rule's notice topic, and the compacted
    forwarded-marker topic.
    """
    notice_topics = [r.source.optout_topic for r in ruleset.rules if r.source.optout_notices.sends]
    plain = [
        *settings.input_topics,
        *(rule.topic for rule in ruleset.rules),
        settings.blocked_topic,
        *notice_topics,
    ]
    compacted = [settings.consent_topic, settings.signup_status_topic]
    if notice_topics:
        compacted.append(settings.forwarded_topic)
    return plain, compacted
