"""Avro input: exact bodies, the writer schema found by id (Schema Registry `mock://`, or pinned)."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema

from streams.core.codec import decode_avro, encode_avro
from streams.core.models import Event, Malformed
from streams.core.schema import event_schema, event_schema_fingerprint, load_schema_json, schema_fingerprint
from streams.runtime.config import ConfigError, load_settings
from streams.runtime.kafka.avro_input import (
    AvroDecoder,
    SchemaLookupError,
    pinned_lookup,
    registry_client,
    registry_lookup,
)

EVENT: dict[str, Any] = {
    "event_id": "e-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-1",
    "device": {
        "device_id": "dev-internal-1",
        "platform": "ios",
        "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc",
    },
    "context": {"country": "US"},
    "properties": {"campaign_id": "winter"},
}


def _schema_with(fields: list[dict[str, Any]]) -> dict[str, Any]:
    schema = copy.deepcopy(load_schema_json())
    schema["fields"] = fields
    return schema


def added_optional_field() -> dict[str, Any]:
    """Version 2: a new optional top-level field (the guard does not know it)."""
    own = load_schema_json()
    return _schema_with([*own["fields"], {"name": "experiment", "type": ["null", "string"], "default": None}])


def removed_field() -> dict[str, Any]:
    """Version 3: `profile_id` removed (the guard's schema gives it a default)."""
    return _schema_with([f for f in load_schema_json()["fields"] if f["name"] != "profile_id"])


def reordered_device() -> dict[str, Any]:
    """Device fields in another order: decoding by position would put device_id in ad_id."""
    schema = copy.deepcopy(load_schema_json())
    device = next(f for f in schema["fields"] if f["name"] == "device")
    record = device["type"][1]
    record["fields"] = list(reversed(record["fields"]))
    return schema


def _encode(event: dict[str, Any], schema: dict[str, Any], schema_id: int) -> bytes:
    import fastavro

    return encode_avro(event, fastavro.parse_schema(schema), schema_id)


@pytest.fixture
def registry() -> Any:
    return registry_client({"url": f"mock://{uuid.uuid4().hex}"})


def _register(registry: Any, schema: dict[str, Any], subject: str = "internal.events-value") -> int:
    schema_id: int = registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    return schema_id


def test_trailing_bytes_make_an_avro_body_malformed() -> None:
    raw = encode_avro(EVENT, event_schema())
    assert isinstance(decode_avro(raw, event_schema()), Event)
    glued = decode_avro(raw + raw[5:], event_schema())
    assert isinstance(glued, Malformed) and "trailing" in glued.error and glued.reason == "malformed"


def test_registry_resolves_each_schema_version_by_id(registry: Any) -> None:
    v1 = _register(registry, load_schema_json())
    v2 = _register(registry, added_optional_field())
    v3 = _register(registry, removed_field())
    decoder = AvroDecoder(registry_lookup(registry))
    own = decoder.decode(_encode(EVENT, load_schema_json(), v1))
    added = decoder.decode(_encode({**EVENT, "experiment": "b"}, added_optional_field(), v2))
    removed = decoder.decode(_encode({**EVENT, "profile_id": None}, removed_field(), v3))
    assert isinstance(own, Event) and isinstance(added, Event) and isinstance(removed, Event)
    assert own == added == removed
    assert own.device is not None and own.device.device_id == "dev-internal-1"


def test_reordered_writer_fields_are_read_by_name_not_position(registry: Any) -> None:
    writer_id = _register(registry, reordered_device())
    raw = _encode(EVENT, reordered_device(), writer_id)
    by_name = AvroDecoder(registry_lookup(registry)).decode(raw)
    assert isinstance(by_name, Event) and by_name.device is not None
    assert by_name.device.ad_id == EVENT["device"]["ad_id"]
    assert by_name.device.device_id == "dev-internal-1"
    by_position = decode_avro(raw, event_schema())  # what the guard did before: never this
    assert not isinstance(by_position, Event) or by_position.device != by_name.device


def test_a_writer_naming_the_record_by_its_full_name_is_compatible(registry: Any) -> None:
    full = copy.deepcopy(load_schema_json())
    full["name"] = f"{full.pop('namespace')}.{full['name']}"
    decoded = AvroDecoder(registry_lookup(registry)).decode(_encode(EVENT, full, _register(registry, full)))
    assert isinstance(decoded, Event)


def test_unknown_id_blocks_as_schema_unknown(registry: Any) -> None:
    _register(registry, load_schema_json())
    decoded = AvroDecoder(registry_lookup(registry)).decode(_encode(EVENT, load_schema_json(), 4242))
    assert isinstance(decoded, Malformed) and decoded.reason == "schema_unknown"
    assert "4242" in decoded.error


def test_incompatible_schemas_block_as_schema_incompatible(registry: Any) -> None:
    renamed = copy.deepcopy(load_schema_json())
    renamed["name"] = "SomethingElse"
    no_event_type = _schema_with([f for f in load_schema_json()["fields"] if f["name"] != "event_type"])
    retyped = _schema_with(
        [
            {**f, "type": "long"} if f["name"] == "event_type" else f
            for f in load_schema_json()["fields"]
            if f["name"] != "event_time"
        ]
        + [{"name": "event_time", "type": "long"}]
    )
    decoder = AvroDecoder(registry_lookup(registry))
    for schema, event in (
        (renamed, EVENT),
        (no_event_type, {k: v for k, v in EVENT.items() if k != "event_type"}),
        (retyped, {**EVENT, "event_type": 7, "event_time": 1}),
    ):
        decoded = decoder.decode(_encode(event, schema, _register(registry, schema, str(uuid.uuid4()))))
        assert isinstance(decoded, Malformed), decoded
        assert decoded.reason == "schema_incompatible", decoded.error


def test_registry_outage_blocks_fail_closed_and_is_asked_again_later() -> None:
    now = [0.0]
    calls: list[int] = []

    def flaky(schema_id: int) -> str | None:
        calls.append(schema_id)
        if len(calls) == 1:
            raise SchemaLookupError("connection refused")
        return json.dumps(load_schema_json())

    decoder = AvroDecoder(flaky, clock=lambda: now[0])
    raw = encode_avro(EVENT, event_schema(), 9)
    first = decoder.decode(raw)
    assert isinstance(first, Malformed) and first.reason == "schema_unknown"
    assert isinstance(decoder.decode(raw), Malformed) and calls == [9]  # not asked per record
    now[0] = 60.0
    assert isinstance(decoder.decode(raw), Event) and calls == [9, 9]


def test_an_unknown_id_is_asked_about_again_later(registry: Any) -> None:
    now = [0.0]
    decoder = AvroDecoder(registry_lookup(registry), clock=lambda: now[0])
    raw = encode_avro(EVENT, event_schema(), 1)
    assert isinstance(decoder.decode(raw), Malformed)
    assert _register(registry, load_schema_json()) == 1  # registered after the first record
    assert isinstance(decoder.decode(raw), Malformed)  # the verdict is cached for a while
    now[0] = 120.0
    assert isinstance(decoder.decode(raw), Event)


def test_lookups_are_cached_per_id(registry: Any) -> None:
    schema_id = _register(registry, load_schema_json())
    calls: list[int] = []
    lookup = registry_lookup(registry)

    def counting(candidate: int) -> str | None:
        calls.append(candidate)
        return lookup(candidate)

    decoder = AvroDecoder(counting)
    for _ in range(3):
        assert isinstance(decoder.decode(_encode(EVENT, load_schema_json(), schema_id)), Event)
    assert calls == [schema_id]


def test_pinned_writer_schema_accepts_only_its_id() -> None:
    decoder = AvroDecoder(pinned_lookup(3))
    assert isinstance(decoder.decode(encode_avro(EVENT, event_schema(), 3)), Event)
    other = decoder.decode(_encode(EVENT, reordered_device(), 4))
    assert isinstance(other, Malformed) and other.reason == "schema_unknown"


def test_avro_input_without_registry_needs_the_guards_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("PARTNER_GUARD_INPUT_FORMATS", "internal.events=avro")
    with pytest.raises(ConfigError, match="avro_schema_fingerprint"):
        load_settings()
    monkeypatch.setenv("PARTNER_GUARD_AVRO_SCHEMA_ID", "3")
    monkeypatch.setenv("PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT", schema_fingerprint(reordered_device()))
    with pytest.raises(ConfigError, match="misread"):
        load_settings()
    monkeypatch.setenv("PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT", event_schema_fingerprint())
    assert load_settings().avro_schema_id == 3
    monkeypatch.delenv("PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT")
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_URL", "https://registry.internal:8081")
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_BASIC_AUTH", "guard:s3cret")
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_CA_FILE", "/etc/ssl/registry-ca.pem")
    settings = load_settings()
    assert settings.registry_config() == {
        "url": "https://registry.internal:8081",
        "timeout": 5.0,
        "max.retries": 1,
        "basic.auth.user.info": "guard:s3cret",
        "ssl.ca.location": "/etc/ssl/registry-ca.pem",
    }
    assert "s3cret" not in repr(settings)


def test_fingerprint_ignores_docs_and_privacy_tags() -> None:
    stripped = json.loads(json.dumps(load_schema_json()).replace('"privacy"', '"other"'))
    assert schema_fingerprint(stripped) == event_schema_fingerprint()
    assert schema_fingerprint(reordered_device()) != event_schema_fingerprint()


def test_a_non_avro_schema_id_blocks_as_schema_incompatible(registry: Any) -> None:
    proto_id: int = registry.register_schema(
        "other-value", Schema('syntax = "proto3"; message M { string a = 1; }', "PROTOBUF")
    )
    decoded = AvroDecoder(registry_lookup(registry)).decode(encode_avro(EVENT, event_schema(), proto_id))
    assert isinstance(decoded, Malformed) and decoded.reason == "schema_incompatible"
    assert "PROTOBUF" in decoded.error
