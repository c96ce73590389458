"""The guard as a real process, seen from outside: start it, wait for readiness, read its
metrics, produce to and read back whole topics.

One helper for everything that drives `partner-guard run` as a child process: the demo, the
integration tests and the benchmarks. Nothing here decides anything; it only starts the
command a user would start and looks at what an operator would look at (/readyz, /healthz,
/metrics, the output topics with `read_committed`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import Consumer, IsolationLevel, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from streams.broker.embedded import free_port
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka.io import produce

LOOPBACK = "127.0.0.1"
HTTP_OK = 200
# Short enough that a test's second guard takes partitions over quickly, long enough that a
# loaded two-core machine does not expire the group between polls.
SESSION_TIMEOUT_MS = 6000
# How much of a guard's log an error message shows (the end: where the cause is).
LOG_TAIL_CHARS = 4000


class TopicRecord(NamedTuple):
    """One record read back from a topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def new_producer(bootstrap: str, **settings: Any) -> Producer:
    """An idempotent producer with a short linger; `settings` override librdkafka properties."""
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True, **settings})


def produce_all(producer: Producer, topic: str, records: Iterable[KeyedRecord]) -> int:
    """Produce every record (without flushing); returns the count."""
    count = 0
    for record in records:
        produce(producer, topic, record.value, record.key)
        count += 1
    return count


def produce_fresh_events(
    producer: Producer, topic: str, generator: TrafficGenerator, sent: int, due: float
) -> int:
    """Produce generated events stamped with the current time until `due` have been sent in
    all (for offering a steady rate); returns the new count sent."""
    while sent < due:
        record = generator.event(epoch_ms=int(time.time() * 1000))
        produce(producer, topic, record.value, record.key)
        sent += 1
    return sent


def produce_records(bootstrap: str, topic: str, records: Iterable[KeyedRecord]) -> int:
    """Produce every record with a fresh producer and flush; returns the count."""
    producer = new_producer(bootstrap)
    count = produce_all(producer, topic, records)
    producer.flush(30)
    return count


def end_offsets(bootstrap: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The end offset of each partition as listed now, open transactions included.

    (Listed `read_uncommitted`: under `read_committed` the embedded broker answers 0 for a
    partition with an open transaction. It answers the base offset of the last record batch
    + 1, not the true end: `read_topic` drains the rest of that batch.)
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}  # type: ignore[no-untyped-call]
    futures = admin.list_offsets(request, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10)
    return {tp.partition: max(0, future.result().offset) for tp, future in futures.items()}


def _topic_record(message: Message) -> TopicRecord:
    raw_headers = message.headers() or []
    pairs = list(raw_headers.items()) if isinstance(raw_headers, dict) else raw_headers
    headers = [(k, v if isinstance(v, bytes) else b"") for k, v in pairs]
    return TopicRecord(message.key(), message.value(), headers)


def read_topic(
    bootstrap: str, topic: str, expect: int | None = None, idle_s: float = 3.0, timeout_s: float = 120.0
) -> list[TopicRecord]:
    """Every committed record of a topic (all partitions, from the start), read `read_committed`.

    Without `expect`: at least everything committed before the call. The end offsets are
    listed first; the read stops once the consumer's position (which steps over transaction
    markers) reaches every one of them, after draining what is already fetched (the rest of
    the last record batch). An end held back by a transaction still open is waited for until
    `idle_s` passes without a new record. With `expect`: until that many records arrived.
    Never longer than `timeout_s`.
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
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = end_offsets(bootstrap, topic, partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending = {p for p, end in ends.items() if end > 0}
    out: list[TopicRecord] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        if expect is not None and len(out) >= expect:
            break
        if expect is None and (not pending or time.monotonic() - last_new > idle_s):
            break
        batch = consumer.consume(10_000, 0.1)
        out.extend(_topic_record(m) for m in batch if m.error() is None)
        if batch:
            last_new = time.monotonic()
        for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
            if tp.offset >= ends[tp.partition]:
                pending.discard(tp.partition)
    if expect is None and not pending:  # the rest of the last record batches, already fetched
        while time.monotonic() < deadline and (batch := consumer.consume(10_000, 0)):
            out.extend(_topic_record(m) for m in batch if m.error() is None)
    consumer.close()
    return out


def scrape(port: int, path: str = "/metrics") -> str:
    """The text a guard serves on `path` (raises OSError while it does not answer)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` in a /metrics text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` in a /metrics text, by upper bound."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            found[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return found


@dataclass
class GuardProcess:
    """`partner-guard run` as a real child process."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    def metrics(self) -> str:
        """The text of /metrics."""
        return scrape(self.metrics_port)

    def status(self, path: str) -> int:
        """HTTP status of /healthz or /readyz (0 while nothing answers)."""
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait for /readyz (the state is loaded and the loop runs); raise if the guard exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"guard exited with {self.process.returncode}: {self.log()}")
            if self.status("/readyz") == HTTP_OK:
                return
            time.sleep(0.1)
        raise TimeoutError(f"guard not ready within {timeout_s:.0f} s: {self.log()}")

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching the labels."""
        return metric_sum(self.metrics(), name, **labels)

    def log(self) -> str:
        """The end of the process log so far."""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self, timeout_s: float = 60.0, stop_signal: int = signal.SIGTERM) -> int:
        """SIGTERM (or `stop_signal`) and wait (SIGKILL after `timeout_s`: generous, a Faust worker
        on a busy machine can take more than 15 s to stop); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_guard(
    bootstrap: str,
    input_topics: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    dev: bool = False,
    cwd: Path | None = None,
    metrics_port: int = 0,
) -> GuardProcess:
    """Start `partner-guard run --create-topics` (with `--dev` when asked) against a broker.

    The guard serves its metrics and probes on loopback, on `metrics_port` (0: a free one);
    `env` adds or overrides PARTNER_GUARD_* settings (group, transactional id, keys, rules, ...).
    """
    port = metrics_port or free_port()
    child_env = {
        **os.environ,
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_INPUT_TOPICS": input_topics,
        "PARTNER_GUARD_METRICS_PORT": str(port),
        "PARTNER_GUARD_METRICS_HOST": LOOPBACK,
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        **(env or {}),
    }
    command = [sys.executable, "-m", "streams", "run", "--create-topics", *(["--dev"] if dev else [])]
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    return GuardProcess(process, port, log_path)
