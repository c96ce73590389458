"""End-to-end throughput against the embedded broker, with baselines measured in the same run.

    python benchmarks/bench_pipeline.py [RECORDS]     (default 200000; DESIGN.md §6 asks ≥ 500k)

Pipelines, one process each, reading the same input topic (3 partitions):
  passthrough   confluent-kafka consume -> produce, bytes untouched
  json strip    orjson decode, drop context/user/properties, encode
  guard         `partner-guard run` (real rules, transactions on, realistic mix)
Prints records/s for each and the guard's ratio to the json-strip baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.gen.traffic import TrafficGenerator
from streams.runtime.kafka_io import produce
from streams.runtime.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
INPUT = "bench.events"
DROP = ("context", "user", "properties")


def _produce_input(bootstrap: str, count: int) -> TrafficGenerator:
    generator = TrafficGenerator(seed=21, population=20_000, malformed_rate=0.005)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000})
    for topic, records in (
        ("privacy.consent", generator.consent_records()),
        ("member.signup-status", generator.signup_statuses()),
        (INPUT, generator.events(count)),
    ):
        for record in records:
            produce(producer, topic, record.value, record.key)
    producer.flush(120)
    return generator


def _copy(bootstrap: str, count: int, out_topic: str, transform: Callable[[bytes], bytes | None]) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    consumer.subscribe([INPUT])
    seen = 0
    started = 0.0
    while seen < count:
        batch = consumer.consume(2000, 1.0)
        if batch and not started:
            started = time.perf_counter()
        for message in batch:
            if message.error():
                continue
            value = transform(message.value() or b"")
            if value is not None:
                produce(producer, out_topic, value, message.key())
            seen += 1
        consumer.commit(asynchronous=True)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def _strip(value: bytes) -> bytes | None:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        for name in DROP:
            obj.pop(name, None)
    return orjson.dumps(obj)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _guard(bootstrap: str, count: int, workdir: Path) -> float:
    port = free_port()
    env = {
        **os.environ,
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_INPUT_TOPICS": INPUT,
        "PARTNER_GUARD_METRICS_PORT": str(port),
        "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_GROUP_ID": f"bench-guard-{uuid.uuid4().hex}",
        "PARTNER_GUARD_TRANSACTIONAL_ID": "bench-guard-0",
        "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "bench-key-install-attribution",
        "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "bench-key-signup-conversions",
    }
    log = open(workdir / "guard.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--create-topics"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        first_seen = 0.0
        while True:
            time.sleep(0.2)
            if process.poll() is not None:
                raise RuntimeError((workdir / "guard.log").read_text()[-3000:])
            try:
                done = _metric(port, "partner_guard_records_in_total")
            except OSError:
                continue
            if done and not first_seen:
                first_seen, first_count = time.perf_counter(), done
            if done >= count:
                return (done - first_count) / (time.perf_counter() - first_seen)
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def main(count: int = 200_000) -> None:
    """Run all pipelines and print the figures."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker.start() as broker:
        config = {"bootstrap.servers": broker.bootstrap}
        ensure_topics(
            config,
            [INPUT, "bench.passthrough", "bench.strip"],
            ["privacy.consent", "member.signup-status"],
            3,
        )
        _produce_input(broker.bootstrap, count)
        passthrough = _copy(broker.bootstrap, count, "bench.passthrough", lambda v: v)
        strip = _copy(broker.bootstrap, count, "bench.strip", _strip)
        guard = _guard(broker.bootstrap, count, Path(tmp))
    print(f"records: {count} (~{count // 1000}k), 3 partitions, embedded broker, one process each")
    print(f"passthrough (bytes untouched)   {passthrough:10,.0f} records/s")
    print(f"json strip                      {strip:10,.0f} records/s")
    print(f"partner-guard (tx, real rules)  {guard:10,.0f} records/s")
    print(f"ratio guard / json strip: {guard / strip:.3f}   (target >= 0.6)")
    print(f"ratio guard / passthrough: {guard / passthrough:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
