"""`partner-guard produce` and `partner-guard tail` against the embedded broker."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from typer.testing import CliRunner

from streams.broker.embedded import EmbeddedBroker
from streams.cli import app
from streams.core.codec import split_confluent_frame
from streams.core.models import Event
from streams.core.schema import event_schema_fingerprint
from streams.harness import read_topic
from streams.runtime.formats.records import BLOCKED_FORMAT, BLOCKED_FORMAT_V1
from streams.runtime.kafka.avro_input import AvroDecoder, pinned_lookup, registry_lookup
from streams.runtime.kafka.topics import ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 120.0

INSTALL = {
    "event_id": "ev-1",
    "event_type": "app_install",
    "event_time": "2026-12-01T10:42:17Z",
    "account_id": "acct-1",
    "device": {"device_id": "dev-1", "platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
    "context": {"country": "US"},
    "properties": {"campaign_id": "winter"},
}


def _topic(name: str, broker: EmbeddedBroker | None = None) -> str:
    """A fresh topic name; created (one partition) when a broker is given."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    if broker is not None:
        ensure_topics({"bootstrap.servers": broker.bootstrap}, [topic], [], 1)
    return topic


def _cli(
    broker: EmbeddedBroker, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        input=stdin,
        env={**clean, "PARTNER_GUARD_BOOTSTRAP_SERVERS": broker.bootstrap, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def _lines(*documents: Any) -> bytes:
    return b"".join((d if isinstance(d, bytes) else orjson.dumps(d)) + b"\n" for d in documents)


def test_produce_sends_each_line_as_it_is_with_key_and_headers(
    session_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic("produce-json", session_broker)
    source = tmp_path / "events.jsonl"
    nested = {**INSTALL, "event_id": "ev-2", "account_id": None}
    source.write_bytes(_lines(INSTALL, nested) + b"\n")  # a blank line is skipped
    by_account = _cli(
        session_broker, "produce", "--topic", topic, "--key-path", "$.account_id", "-H", "source=test",
        "-H", "empty=", str(source),
    )  # fmt: skip
    assert by_account.returncode == 0, by_account.stderr
    assert b"produced 2 record(s)" in by_account.stderr and b"1 without a value" in by_account.stderr
    by_device = _cli(
        session_broker, "produce", "-t", topic, "-k", "device.device_id", "-", stdin=_lines(INSTALL)
    )
    assert by_device.returncode == 0, by_device.stderr
    records = read_topic(session_broker.bootstrap, topic, expect=3, timeout_s=60)
    expected = [orjson.dumps(INSTALL), orjson.dumps(nested), orjson.dumps(INSTALL)]  # the bytes as sent
    assert sorted(r.value or b"" for r in records) == sorted(expected)
    keys = sorted((r.key or b"") for r in records)
    assert keys == [b"", b"acct-1", b"dev-1"]
    with_headers = [r for r in records if r.headers]
    assert len(with_headers) == 2 and all(
        r.headers == [("source", b"test"), ("empty", b"")] for r in with_headers
    )


def test_produce_sends_malformed_lines_unless_it_must_read_them(session_broker: EmbeddedBroker) -> None:
    topic = _topic("produce-raw", session_broker)
    raw = _cli(session_broker, "produce", "--topic", topic, stdin=b'{not json\n{"a": 1}\n')
    assert raw.returncode == 0, raw.stderr  # the guard's `malformed` can be tried on purpose
    keyed = _cli(
        session_broker, "produce", "--topic", topic, "-k", "a", stdin=b'{"a": 1}\n{not json\n{"a": 2}\n'
    )
    assert keyed.returncode == 2
    assert keyed.stderr.decode().startswith("produce: stdin:2: not JSON")
    assert b"1 record(s) before it sent" in keyed.stderr and b"Traceback" not in keyed.stderr
    values = [r.value for r in read_topic(session_broker.bootstrap, topic, expect=3, timeout_s=60)]
    assert sorted(v or b"" for v in values) == sorted([b"{not json", b'{"a": 1}', b'{"a": 1}'])


def test_produce_avro_with_the_pinned_schema_id(session_broker: EmbeddedBroker) -> None:
    topic = _topic("produce-avro", session_broker)
    sent = _cli(
        session_broker, "produce", "-t", topic, "--avro", stdin=_lines(INSTALL),
        env={"PARTNER_GUARD_AVRO_SCHEMA_ID": "7"},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    (record,) = read_topic(session_broker.bootstrap, topic, expect=1, timeout_s=60)
    decoded = AvroDecoder(pinned_lookup(7)).decode(record.value)
    assert isinstance(decoded, Event)
    assert decoded == Event.model_validate(INSTALL)
    unknown_member = _cli(
        session_broker, "produce", "-t", topic, "--avro", stdin=_lines({**INSTALL, "title_name": "Dark"}),
        env={"PARTNER_GUARD_AVRO_SCHEMA_ID": "7"},
    )  # fmt: skip
    assert unknown_member.returncode == 2  # never silently dropped from the record
    assert b"not an event of the guard's Avro schema" in unknown_member.stderr
    no_id = _cli(session_broker, "produce", "-t", topic, "--avro", stdin=_lines(INSTALL))
    assert no_id.returncode == 2 and b"--avro needs schema_registry_url" in no_id.stderr


def test_produce_avro_through_the_schema_registry(
    session_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id is the registry's, under `<topic>-value`; a second run finds the same one."""
    import streams.runtime.kafka.avro_input as avro_input

    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    monkeypatch.setattr(avro_input, "registry_client", lambda _conf: registry)  # an in-memory registry
    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", session_broker.bootstrap)
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_URL", "http://registry.invalid:8081")
    topic = _topic("produce-registry", session_broker)
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["produce", "-t", topic, "--avro"], input=_lines(INSTALL))
        assert result.exit_code == 0, result.output
    records = read_topic(session_broker.bootstrap, topic, expect=2, timeout_s=60)
    registered = registry.get_latest_version(f"{topic}-value")
    frames = [split_confluent_frame(r.value) for r in records]
    assert {getattr(f, "schema_id", None) for f in frames} == {registered.schema_id}
    assert len(registry.get_subjects()) == 1
    decoded = AvroDecoder(registry_lookup(registry)).decode(records[0].value)
    assert decoded == Event.model_validate(INSTALL)


def test_produce_and_tail_use_runs_kafka_settings(session_broker: EmbeddedBroker) -> None:
    """A librdkafka passthrough value librdkafka refuses is refused as `run` refuses it."""
    env = {"PARTNER_GUARD_KAFKA_ACKS": "sometimes"}
    for command in (["produce", "-t", "x"], ["tail", "x"]):
        result = _cli(session_broker, *command, env=env)
        assert result.returncode == 2 and b"Traceback" not in result.stderr
        line = result.stderr.decode().strip()
        assert line.startswith(
            f"{command[0]}: setting 'kafka.acks' = 'sometimes' (env PARTNER_GUARD_KAFKA_ACKS)"
        )


def _blocked_v2(secret: str) -> dict[str, Any]:
    return {
        "format": BLOCKED_FORMAT,
        "event_id": "ev-9",
        "ruleset_digest": "sha256:00",
        "decisions": [
            {"partner": "acme", "rule_id": "acme-v1", "reasons": ["consent_gpc"], "details": []},
            {"partner": "zeta", "rule_id": "zeta-v1", "reasons": ["kids_profile", "minor"], "details": []},
        ],
        "snapshot": None,
        "source": {"topic": "internal.events", "partition": 2, "offset": 41, "timestamp_ms": 1},
        "payload_mode": "full",
        "original_b64": base64.b64encode(secret.encode()).decode(),
        "original_size": len(secret),
        "original_sha256": "00",
        "reduced": False,
    }


def test_tail_decodes_what_the_guard_writes(session_broker: EmbeddedBroker) -> None:
    topic = _topic("tail-kinds")
    ensure_topics({"bootstrap.servers": session_broker.bootstrap}, [topic], [], 1)
    secret = '{"email": "person@example.com"}'
    v1 = {**_blocked_v2(secret), "format": BLOCKED_FORMAT_V1, "partner": "acme", "reasons": ["malformed"]}
    del v1["decisions"]
    notice = {"format": "partner-guard.notice.v1", "partner": "acme", "subject": "a1b2"}
    partner_record = {"event_id": "51568dd2", "event_type": "app_install"}
    producer = Producer({"bootstrap.servers": session_broker.bootstrap})
    values: list[bytes | None] = [
        orjson.dumps(_blocked_v2(secret)), orjson.dumps(v1), orjson.dumps(notice),
        orjson.dumps(partner_record), None, b"\x00\x00\x00\x00\x07\x02", b"\xff not json",
    ]  # fmt: skip
    for value in values:
        producer.produce(topic, value, b"k", headers=[("pg-reasons", b"consent_gpc")])
    producer.flush(30)
    human = _cli(session_broker, "tail", topic, "--from-beginning")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.decode().splitlines()
    assert len(lines) == len(values)
    assert all(line.startswith(f"{topic}[0]@{i} ") and " key=k " in line for i, line in enumerate(lines))
    withheld = "withheld from acme: consent_gpc; zeta: kids_profile,minor"
    assert lines[0].endswith(f"blocked.v2 event ev-9 from internal.events[2]@41 {withheld}")
    assert "blocked.v1 event ev-9 from internal.events[2]@41 withheld from acme: malformed" in lines[1]
    assert 'partner-guard.notice.v1 {"format"' in lines[2]
    assert lines[3].endswith(orjson.dumps(partner_record).decode())
    assert lines[4].endswith("tombstone (null value)")
    assert "avro (schema id 7, 6 bytes; not decoded)" in lines[5]
    assert "10 bytes, not JSON" in lines[6]
    assert "person@example.com" not in human.stdout.decode() and secret not in human.stdout.decode()
    as_json = _cli(session_broker, "tail", topic, "--from-beginning", "--json", "--count", "3")
    documents = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["kind"] for d in documents] == ["blocked.v2", "blocked.v1", "notice"]
    assert documents[0]["value"] == _blocked_v2(secret) and documents[0]["headers"] == [
        ["pg-reasons", "consent_gpc"]
    ]
    assert documents[0]["key"] == "k" and documents[0]["offset"] == 0


def test_tail_decodes_avro_events_with_the_jobs_settings(session_broker: EmbeddedBroker) -> None:
    topic = _topic("tail-avro", session_broker)
    avro_env = {
        "PARTNER_GUARD_AVRO_SCHEMA_ID": "3",
        "PARTNER_GUARD_INPUT_FORMATS": f"{topic}=avro",
        "PARTNER_GUARD_AVRO_SCHEMA_FINGERPRINT": event_schema_fingerprint(),
    }
    assert (
        _cli(session_broker, "produce", "-t", topic, "--avro", stdin=_lines(INSTALL), env=avro_env).returncode
        == 0
    )
    shown = _cli(session_broker, "tail", topic, "--from-beginning", "--json", env=avro_env)
    (document,) = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert document["kind"] == "avro" and document["value"]["event_id"] == "ev-1"
    assert Event.model_validate(document["value"]) == Event.model_validate(INSTALL)


def test_tail_from_the_end_waits_for_count_new_records(
    session_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic("tail-end")
    ensure_topics({"bootstrap.servers": session_broker.bootstrap}, [topic], [], 2)
    producer = Producer({"bootstrap.servers": session_broker.bootstrap})
    producer.produce(topic, b'{"old": true}')
    producer.flush(30)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    out = tmp_path / "tail.out"
    with out.open("wb") as sink:
        tail = subprocess.Popen(
            [sys.executable, "-m", "streams", "tail", topic, "--count", "2", "-b", session_broker.bootstrap],
            env=clean, cwd=ROOT, stdout=sink, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        sent = 0
        while tail.poll() is None and time.monotonic() < deadline:  # it starts at the end: keep sending
            producer.produce(topic, orjson.dumps({"new": sent}))
            producer.flush(30)
            sent += 1
            time.sleep(0.2)
        assert tail.wait(timeout=HANG_GUARD_S) == 0
        lines = out.read_text().splitlines()
        assert len(lines) == 2 and all('{"new":' in line for line in lines), lines
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()


def test_tail_follow_stops_cleanly_on_sigterm(session_broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = _topic("tail-follow")
    ensure_topics({"bootstrap.servers": session_broker.bootstrap}, [topic], [], 1)
    producer = Producer({"bootstrap.servers": session_broker.bootstrap})
    producer.produce(topic, b'{"n": 1}')
    producer.flush(30)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    out = tmp_path / "tail.out"
    with out.open("wb") as sink:
        tail = subprocess.Popen(
            [sys.executable, "-m", "streams", "tail", topic, "--from-beginning", "--follow"],
            env={**clean, "PARTNER_GUARD_BOOTSTRAP_SERVERS": session_broker.bootstrap},
            cwd=ROOT, stdout=sink, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while '{"n":1}' not in out.read_text() and time.monotonic() < deadline:
            assert tail.poll() is None, "--follow must keep waiting after the last record"
            time.sleep(0.1)
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(timeout=HANG_GUARD_S) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()


@pytest.mark.parametrize("command", ["tail", "produce"])
def test_a_missing_topic_is_refused_naming_the_near_one(session_broker: EmbeddedBroker, command: str) -> None:
    topic = _topic(f"{command}-named", session_broker)
    args = ["tail", topic[:-1], "--from-beginning"] if command == "tail" else ["produce", "-t", topic[:-1]]
    result = _cli(session_broker, *args, stdin=b'{"a": 1}\n')
    assert result.returncode == 2
    expected = f"{command}: no topic {topic[:-1]!r} on the broker (did you mean {topic!r}?)"
    assert result.stderr.decode().strip().startswith(expected)
    assert read_topic(session_broker.bootstrap, topic) == []  # nothing sent anywhere


def test_tail_never_writes_control_characters_from_a_record(session_broker: EmbeddedBroker) -> None:
    """Keys and ids are input: an escape sequence or a line break in one is shown escaped."""
    topic = _topic("tail-hostile", session_broker)
    blocked = {**_blocked_v2("x"), "event_id": "e\x1b]0;pwned\x07\nguard.blocked[0]@9 forged"}
    producer = Producer({"bootstrap.servers": session_broker.bootstrap})
    producer.produce(topic, orjson.dumps(blocked), "k\x1b[2J\r\n\u202e".encode())
    producer.produce(topic, b"\x1b[31m not json\n")
    producer.flush(30)
    shown = _cli(session_broker, "tail", topic, "--from-beginning")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert len(text.splitlines()) == 2
    assert not any(c in text for c in "\x1b\x07\r\u202e")
    assert "key=k\\x1b[2J\\r\\n\\u202e" in text and "e\\x1b]0;pwned\\x07\\nguard.blocked[0]@9 forged" in text


def test_produce_refuses_a_record_the_client_cannot_send(session_broker: EmbeddedBroker) -> None:
    topic = _topic("produce-large", session_broker)
    huge = b'{"a": "' + b"x" * 1_200_000 + b'"}\n'  # past librdkafka's message.max.bytes
    result = _cli(session_broker, "produce", "-t", topic, stdin=b'{"a": 1}\n' + huge)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert result.stderr.decode().startswith("produce: stdin:2: the Kafka client refused the record")
    assert len(read_topic(session_broker.bootstrap, topic, expect=1, timeout_s=60)) == 1
