"""Replay of records the job blocked because the Schema Registry did not answer.

Such a decision depended on the registry's state at that moment, not on the record: once
the registry answers, re-deciding the record gives another verdict. Replay reports it as
`unverifiable` (saying why), never as a mismatch that fails the audit; a record that merely
claims so, with other reasons or details, is still checked as any other.
"""

from __future__ import annotations

import json

from streams.audit.replay import REGISTRY_TIME, replay
from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import encode_avro
from streams.core.schema import event_schema, load_schema_json
from streams.runtime.config import Settings
from streams.runtime.kafka.avro_input import REGISTRY_UNAVAILABLE, ReplayAvro
from tests.audit.test_replay_avro import EVENT, _as_the_job_blocked_it
from tests.conftest import RULES_DIR
from tests.runtime.kafka.fake_registry import fake_registry

SCHEMA_ID = 12


def _settings(url: str) -> Settings:
    return Settings(
        bootstrap_servers="127.0.0.1:9092",
        input_formats={"internal.events": "avro"},
        schema_registry_url=url,
        schema_registry_timeout_ms=100,
    )


def test_a_record_blocked_while_the_registry_stalled_is_unverifiable_not_a_mismatch() -> None:
    raw = encode_avro({**EVENT, "event_type": "app_install"}, event_schema(), SCHEMA_ID)
    schemas = {SCHEMA_ID: json.dumps(load_schema_json())}
    with fake_registry(schemas, stall_s=120.0) as stalled:
        views = _as_the_job_blocked_it(raw, _settings(stalled.url))
    assert views and all(v["details"] == [f"schema id {SCHEMA_ID}: {REGISTRY_UNAVAILABLE}"] for v in views)

    forged = [{**views[0], "reasons": ["schema_unknown", "consent_missing"]}]  # not what the job writes
    with fake_registry(schemas) as healthy:
        avro = ReplayAvro(_settings(healthy.url))
        verified = replay(views, RulesetLibrary([RULES_DIR]), None, avro=avro)
        claimed = replay(forged, RulesetLibrary([RULES_DIR]), None, avro=avro)
    assert [o.status for o in verified.outcomes] == ["unverifiable"] * len(views)
    assert all(o.why.endswith(REGISTRY_TIME) for o in verified.outcomes)
    assert not verified.failed
    assert [o.status for o in claimed.outcomes] == ["mismatch"] and claimed.failed
