"""Operations against real processes: Schema Registry input, readiness on broker loss, broker stop."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import orjson
import psutil
import pytest

from streams.broker.embedded import EmbeddedBroker, free_port, wait_for_port
from streams.core.codec import encode_avro
from streams.core.schema import load_schema_json
from streams.gen.traffic import KeyedRecord
from streams.runtime.formats.records import partner_views
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import ROOT, produce, read_topic, start_guard
from tests.integration.records import AD_ID, app_install, consent

STATE_TOPICS = ["privacy.consent", "member.signup-status"]
REGISTRY_USER = "guard:registry-secret"


class FakeRegistry(ThreadingHTTPServer):
    """A Schema Registry speaking the one call the guard makes: GET /schemas/ids/<id>."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _RegistryHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RegistryHandler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization")))
        expected = "Basic " + base64.b64encode(REGISTRY_USER.encode()).decode()
        schema_id = int(self.path.split("?")[0].rsplit("/", 1)[-1]) if "/schemas/ids/" in self.path else -1
        if self.headers.get("Authorization") != expected:
            status, body = 401, {"error_code": 401, "message": "Unauthorized"}
        elif schema_id in self.server.schemas:
            status, body = 200, {"schema": json.dumps(self.server.schemas[schema_id])}
        else:
            status, body = 404, {"error_code": 40403, "message": "Schema not found"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    own = load_schema_json()
    added = copy.deepcopy(own)
    added["fields"].append({"name": "experiment", "type": ["null", "string"], "default": None})
    removed = copy.deepcopy(own)
    removed["fields"] = [f for f in own["fields"] if f["name"] != "profile_id"]
    server = FakeRegistry({11: own, 12: added, 13: removed})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_registry_input_resolves_two_schema_versions_and_blocks_an_unknown_id(
    broker: EmbeddedBroker, registry: FakeRegistry, tmp_path: Path
) -> None:
    topic = "internal.events.registry"
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [topic], STATE_TOPICS, 1)
    produce(broker.bootstrap, "privacy.consent", [consent("sr-1")])
    base = app_install(
        "sr-v1", "sr-1", device={"platform": "android", "ad_id": AD_ID}, properties={"campaign_id": "spring"}
    )
    schemas = registry.schemas

    def framed(event: dict[str, Any], schema_id: int, schema: dict[str, Any]) -> KeyedRecord:
        return KeyedRecord(b"sr-1", encode_avro(event, fastavro.parse_schema(schema), schema_id))

    records = [
        framed(base, 11, schemas[11]),
        framed({**base, "event_id": "sr-v2", "experiment": "b"}, 12, schemas[12]),
        framed({**base, "event_id": "sr-v3"}, 13, schemas[13]),
        framed({**base, "event_id": "sr-unknown"}, 99, schemas[11]),
    ]
    guard_env = {
        "PARTNER_GUARD_INPUT_FORMATS": f"{topic}=avro",
        "PARTNER_GUARD_SCHEMA_REGISTRY_URL": registry.url,
        "PARTNER_GUARD_SCHEMA_REGISTRY_BASIC_AUTH": REGISTRY_USER,
        "PARTNER_GUARD_SCHEMA_REGISTRY_TIMEOUT_MS": "60000",  # a loaded test machine is slow, not down
    }
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        topic,
        "registry",
        transactional_id="guard-registry-0",
        extra_env=guard_env,
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, topic, records)
        forwarded = read_topic(broker.bootstrap, "partner.install-attribution.events", expect=3)
        # one blocked record per input (v2): the three readable ones for signup-conversions, the unknown id
        blocked = [
            view
            for _, v, _ in read_topic(broker.bootstrap, "guard.blocked", expect=4)
            for view in partner_views(orjson.loads(v or b""))
        ]
    finally:
        assert guard.stop() == 0, guard.log()
    assert len(forwarded) == 3
    assert all(orjson.loads(v or b"")["campaign_id"] == "spring" for _, v, _ in forwarded)
    unknown = [b for b in blocked if b["source"]["offset"] == 3]
    assert sorted(b["partner"] for b in unknown) == ["install-attribution", "signup-conversions"]
    assert all(b["reasons"] == ["schema_unknown"] for b in unknown)
    assert {b["reasons"][0] for b in blocked if b["source"]["offset"] != 3} <= {"event_type_not_allowed"}
    ids = [path for path, _ in registry.requests]
    assert sum("/schemas/ids/11" in p for p in ids) == 1  # cached per id
    assert all(auth is not None for _, auth in registry.requests)
    assert "registry-secret" not in guard.log()

    # replay decodes each Avro original the way the job did (writer schema by id from the
    # registry): every record of the three schema versions and the unknown id reproduces
    report = tmp_path / "replay.jsonl"
    replayed = subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--no-git", "--jsonl", str(report)],
        cwd=ROOT,
        env={**os.environ, **guard_env, "PARTNER_GUARD_BOOTSTRAP_SERVERS": broker.bootstrap},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    rows = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert len(rows) == 5 and {r["status"] for r in rows} == {"match"}, rows
    assert {r["source"]["offset"] for r in rows} == {0, 1, 2, 3}


def test_readiness_drops_when_the_broker_is_lost_and_recovers(broker: EmbeddedBroker, tmp_path: Path) -> None:
    ensure_topics({"bootstrap.servers": broker.bootstrap}, ["internal.events.watch"], STATE_TOPICS, 1)
    guard = start_guard(
        broker.bootstrap, tmp_path, "internal.events.watch", "watch", transactional_id="watch-0"
    )
    paused = False
    try:
        guard.wait_ready()
        _wait_for(lambda: guard.metric_value("partner_guard_ready") == 1, guard.log)
        broker.process.send_signal(signal.SIGSTOP)
        paused = True
        _wait_for(lambda: guard.status("/readyz") == 503, guard.log)
        assert guard.metric_value("partner_guard_ready") == 0
        broker.process.send_signal(signal.SIGCONT)
        paused = False
        _wait_for(lambda: guard.status("/readyz") == 200, guard.log)
        assert guard.metric_value("partner_guard_ready") == 1
    finally:
        if paused:
            broker.process.send_signal(signal.SIGCONT)
        code = guard.stop()
    assert code == 0, guard.log()
    lines = [orjson.loads(line) for line in guard.log().splitlines() if line.startswith("{")]
    warnings = [entry for entry in lines if entry["msg"].startswith("broker unreachable")]
    assert warnings and warnings[0]["level"] == "warning"
    assert any(entry["msg"].startswith("broker reachable again") for entry in lines)
    start = next(entry["msg"] for entry in lines if entry["msg"].startswith("ready: "))
    for part in (
        "ruleset sha256:",
        "install-attribution",
        "internal.events.watch",
        "metrics on http://",
        "consent",
    ):
        assert part in start


def _wait_for(condition: Any, log: Any, timeout_s: float = 90.0) -> None:
    """Poll a condition (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met: {log()}")


def test_broker_command_exits_promptly_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "broker", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout_s=60)
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the broker runs as a child process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
