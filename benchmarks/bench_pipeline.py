"""End-to-end throughput against the embedded broker, with baselines measured in the same run.

    python benchmarks/bench_pipeline.py [RECORDS]     (default 200000; DESIGN.md §6 asks ≥ 500k)

Pipelines, one process each, reading the same input topic (3 partitions):
  passthrough   confluent-kafka consume -> produce, bytes untouched
  json strip    orjson decode, drop context/user/properties, encode
  guard         `partner-guard run` (real rules, transactions on, realistic mix)
  guard, faust  `partner-guard run --engine faust` (same decisions, at least once)
Prints records/s for each and the guard's ratio to the json-strip baseline, then offers the
guard half of its measured peak for 20 s and prints the p99 end-to-end latency.
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


def _histogram(port: int, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, by upper bound."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def _quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile's bucket upper bound over the records observed between two scrapes."""
    deltas = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = deltas[-1][1]
    for bound, cumulative in deltas:
        if total and cumulative >= q * total:
            return bound
    return float("nan")


def _start_guard(bootstrap: str, workdir: Path, engine: str = "kafka") -> tuple[subprocess.Popen[bytes], int]:
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
        "PARTNER_GUARD_FAUST_ACCEPTED_GAPS": "P8",  # the embedded broker: Faust runs at least once
    }
    log = open(workdir / "guard.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--create-topics", "--engine", engine],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, port


def _guard_throughput(process: subprocess.Popen[bytes], port: int, count: int, workdir: Path) -> float:
    first_seen, first_count = 0.0, 0.0
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


def _latency_at(bootstrap: str, port: int, generator: TrafficGenerator, rate: float, seconds: float) -> float:
    """p99 end-to-end latency (record timestamp to committed output) at a steady offered rate."""
    name = "partner_guard_end_to_end_latency_seconds"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    before = _histogram(port, name)
    begin = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - begin) < seconds:
        while sent < rate * elapsed:
            record = generator.event(epoch_ms=int(time.time() * 1000))
            produce(producer, INPUT, record.value, record.key)
            sent += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)
    time.sleep(3)  # let the last batches commit
    return _quantile(before, _histogram(port, name), 0.99)


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
        generator = _produce_input(broker.bootstrap, count)
        passthrough = _copy(broker.bootstrap, count, "bench.passthrough", lambda v: v)
        strip = _copy(broker.bootstrap, count, "bench.strip", _strip)
        process, port = _start_guard(broker.bootstrap, Path(tmp))
        try:
            guard = _guard_throughput(process, port, count, Path(tmp))
            p99 = _latency_at(broker.bootstrap, port, generator, guard / 2, 20.0)
        finally:
            process.terminate()
            process.wait(30)
        process, port = _start_guard(broker.bootstrap, Path(tmp), engine="faust")
        try:
            faust = _guard_throughput(process, port, count, Path(tmp))
        finally:
            process.terminate()
            process.wait(30)
    print(f"records: {count} (~{count // 1000}k), 3 partitions, embedded broker, one process each")
    print(f"passthrough (bytes untouched)   {passthrough:10,.0f} records/s")
    print(f"json strip                      {strip:10,.0f} records/s")
    print(f"partner-guard (tx, real rules)  {guard:10,.0f} records/s")
    print(f"partner-guard, faust engine     {faust:10,.0f} records/s")
    print(f"ratio guard / json strip: {guard / strip:.3f}   (target >= 0.6)")
    print(f"ratio faust engine / guard: {faust / guard:.3f}")
    print(f"ratio guard / passthrough: {guard / passthrough:.3f}")
    print(
        f"p99 end-to-end latency at half of peak ({guard / 2:,.0f} records/s): <= {p99 * 1000:.0f} ms "
        "(histogram bucket bound; target <= 250 ms)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
