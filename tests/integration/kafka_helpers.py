"""Helpers for integration tests: produce, read whole topics, run the guard as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.broker.embedded import free_port
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka_io import produce as produce_one
from streams.runtime.records import partner_views
from streams.runtime.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
PARTNERS = ("install-attribution", "signup-conversions")
KEY_ENV = {
    "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "integration-key-install-0001",
    "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "integration-key-signup-00001",
}


def produce(bootstrap: str, topic: str, records: Iterable[KeyedRecord]) -> int:
    """Produce and flush; returns the count."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    count = 0
    for record in records:
        produce_one(producer, topic, record.value, record.key)
        count += 1
    producer.flush(30)
    return count


def seed_population(bootstrap: str, input_topic: str, population: int, seed: int) -> TrafficGenerator:
    """Create the input and state topics and seed consent and sign-up status for a population."""
    ensure_topics(
        {"bootstrap.servers": bootstrap}, [input_topic], ["privacy.consent", "member.signup-status"], 3
    )
    generator = TrafficGenerator(seed=seed, population=population)
    produce(bootstrap, "privacy.consent", generator.consent_records())
    produce(bootstrap, "member.signup-status", generator.signup_statuses())
    return generator


def read_topic(
    bootstrap: str, topic: str, expect: int | None = None, idle_s: float = 3.0, timeout_s: float = 120.0
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Every record of a topic (all partitions) as (key, value, headers).

    Stops once `expect` records arrived, or after `idle_s` without new records.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    out: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        if expect is not None and len(out) >= expect:
            break
        if expect is None and time.monotonic() - last_new > idle_s:
            break
        batch = consumer.consume(10_000, 0.5)
        for message in batch:
            if message.error() is None:
                raw_headers = message.headers() or []
                pairs = list(raw_headers.items()) if isinstance(raw_headers, dict) else raw_headers
                headers = [(k, v if isinstance(v, bytes) else b"") for k, v in pairs]
                out.append((message.key(), message.value(), headers))
        if batch:
            last_new = time.monotonic()
    consumer.close()
    return out


def read_blocked(bootstrap: str, topic: str = "guard.blocked") -> list[dict[str, Any]]:
    """Every blocked record as one view per (input, partner), whichever format was written."""
    return [
        view
        for _, value, _ in read_topic(bootstrap, topic)
        for view in partner_views(orjson.loads(value or b""))
    ]


@dataclass
class GuardProcess:
    """`partner-guard run` as a real child process."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    def metrics(self) -> str:
        """The text of /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def status(self, path: str) -> int:
        """HTTP status of /healthz or /readyz."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait for /readyz (the state is loaded and the loop runs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"guard exited with {self.process.returncode}: {self.log()}")
            if self.status("/readyz") == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"guard not ready: {self.log()}")

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching the labels."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        """The process log so far."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_guard(
    bootstrap: str,
    tmp: Path,
    input_topics: str,
    group: str,
    extra_env: dict[str, str] | None = None,
    transactional_id: str | None = None,
    engine: str = "kafka",
) -> GuardProcess:
    """Start `partner-guard run --create-topics --engine ENGINE` against the broker.

    The Faust engine runs at least once here (the embedded broker refuses aiokafka's
    transactions), which it only does with promise P8's gap acknowledged.
    """
    port = free_port()
    log_path = tmp / f"guard-{port}.log"
    env = {
        **os.environ,
        **KEY_ENV,
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_INPUT_TOPICS": input_topics,
        "PARTNER_GUARD_GROUP_ID": group,
        "PARTNER_GUARD_METRICS_PORT": str(port),
        "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_BATCH_TIMEOUT_MS": "50",
        "PARTNER_GUARD_RULES_DIR": str(ROOT / "rules"),
        **(extra_env or {}),
    }
    if transactional_id:
        env["PARTNER_GUARD_TRANSACTIONAL_ID"] = transactional_id
    if engine == "faust":
        env.setdefault("PARTNER_GUARD_FAUST_ACCEPTED_GAPS", "P8")
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--create-topics", "--engine", engine],
        env=env,
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return GuardProcess(process, port, log_path)
