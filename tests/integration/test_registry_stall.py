"""The running job under a stalled Schema Registry: it decides every record and stays healthy.

A real guard process, the embedded broker, and a real HTTP registry on loopback that accepts
every request and never answers. Records framed under hundreds of made-up schema ids used to
cost each id its own timeout and retry, one after another: one batch held the guard for
minutes (hours at the default timeout) with `/healthz` 503 and nothing decided.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.core.codec import encode_avro
from streams.core.schema import event_schema, load_schema_json
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.avro_input import REGISTRY_UNAVAILABLE
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import committed_offsets, produce, read_blocked, start_guard
from tests.integration.records import AD_ID, app_install
from tests.runtime.kafka.fake_registry import fake_registry

pytestmark = pytest.mark.integration

TOPIC = "internal.events.avro"
GROUP = "registry-stall"
MADE_UP = 300
PATIENCE_S = 240.0  # far above the bounded time; on a guard without the circuit, ~450 s


@pytest.mark.parametrize("engine", ["kafka", "faust"])
def test_a_stalled_registry_and_made_up_ids_cost_bounded_time(
    broker: EmbeddedBroker, tmp_path: Path, engine: str
) -> None:
    ensure_topics(
        {"bootstrap.servers": broker.bootstrap}, [TOPIC], ["privacy.consent", "member.signup-status"], 1
    )
    event = app_install("stall-1", "acct-stall", device={"platform": "android", "ad_id": AD_ID})
    records = [
        KeyedRecord(b"acct-stall", encode_avro(event, event_schema(), 10_000 + i)) for i in range(MADE_UP)
    ]
    with fake_registry({1: json.dumps(load_schema_json())}, stall_s=600.0) as stalled:
        guard = start_guard(
            broker.bootstrap,
            tmp_path,
            TOPIC,
            GROUP,
            transactional_id="guard-registry-stall-0",
            engine=engine,
            extra_env={
                "PARTNER_GUARD_INPUT_FORMATS": f"{TOPIC}=avro",
                "PARTNER_GUARD_SCHEMA_REGISTRY_URL": stalled.url,
                "PARTNER_GUARD_SCHEMA_REGISTRY_TIMEOUT_MS": "500",
            },
        )
        try:
            guard.wait_ready()
            produce(broker.bootstrap, TOPIC, records)
            health: set[int] = set()
            deadline = time.monotonic() + PATIENCE_S
            while sum(committed_offsets(broker.bootstrap, GROUP, TOPIC).values()) < MADE_UP:
                assert time.monotonic() < deadline, (
                    f"not all decided; registry asked {stalled.requests} times"
                )
                assert guard.process.poll() is None, guard.log()
                health.add(guard.status("/healthz"))
                time.sleep(0.25)
            health.add(guard.status("/healthz"))
            assert health == {200}
            opened = guard.log().count("schema registry unavailable")
            assert 1 <= opened <= 20  # the circuit opened, and said so once per pause, not per id
            asked = stalled.requests
        finally:
            assert guard.stop() == 0
    blocked = [b for b in read_blocked(broker.bootstrap) if b["source"]["topic"] == TOPIC]
    assert len({b["source"]["offset"] for b in blocked}) == MADE_UP
    assert {tuple(b["reasons"]) for b in blocked} == {("schema_unknown",)}
    assert {d for b in blocked for d in b["details"]} == {
        f"schema id {10_000 + i}: {REGISTRY_UNAVAILABLE}" for i in range(MADE_UP)
    }
    assert asked < 20  # a probe per pause, not a request (and a retry) per made-up id
