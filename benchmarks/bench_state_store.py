"""The disk state store at scale: cold build, restart from checkpoint, RSS, disk, lookup cost.

    python benchmarks/bench_state_store.py [ENTRIES]      (default 10,000,000)

Against the embedded broker: produces ENTRIES consent records (accounts, profiles and
devices), starts `partner-guard run --dev` with `state_store: rocksdb` on an empty state
directory (cold build: time to /readyz, RSS), stops it, starts it again (restart from the
checkpoint: time to /readyz, RSS), then measures in-process the added cost per decision of
the disk store's lookups (warm cache) against the memory table. Prints each figure with
its target. A benchmark, never a test.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.core.models import Event
from streams.runtime.kafka.io import produce
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.state.layout import state_topic_layout
from streams.runtime.state.store import StoreTuning, open_state_tables
from streams.runtime.state.tables import ConsentTable, SignupStatusTable, snapshot_for

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("account", "profile", "device")
RESTART_TARGET_S = 10.0
RSS_TARGET_MIB = 500.0
LOOKUP_TARGET_US = 5.0


def _subject(n: int) -> str:
    return f"{KINDS[n % 3]}:id-{n // 3:010d}"


def _consent_value(n: int) -> bytes:
    return orjson.dumps(
        {
            "subject": _subject(n),
            "updated_at": "2026-11-01T00:00:00Z",
            "interest_based_ads": "granted" if n % 7 else "denied",
            "do_not_sell_or_share": n % 11 == 0,
            "matched_identifier_opt_out": False,
            "ad_cookies": "granted",
            "jurisdiction": ("US-CA", "US-NY", "DE", "GB", "FR")[n % 5],
        }
    )


def _produce_state(bootstrap: str, entries: int) -> float:
    started = time.perf_counter()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000})
    for n in range(entries):
        produce(producer, "privacy.consent", _consent_value(n), _subject(n).encode())
    producer.flush(600)
    return time.perf_counter() - started


def _start_guard(
    bootstrap: str, state_dir: Path, log: Path, store: str = "rocksdb"
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_INPUT_TOPICS": "bench.events",
        "PARTNER_GUARD_METRICS_PORT": str(port),
        "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_RULES_DIR": str(ROOT / "rules"),
        "PARTNER_GUARD_STATE_STORE": store,
        "PARTNER_GUARD_STATE_DIR": str(state_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--dev", "--create-topics"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return process, port


def _time_to_ready(
    process: subprocess.Popen[bytes], port: int, timeout_s: float = 3600
) -> tuple[float, float]:
    """Seconds from start to /readyz 200, and the process's RSS (MiB) then."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        assert process.poll() is None, "guard died"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    elapsed = time.perf_counter() - started
                    return elapsed, psutil.Process(process.pid).memory_info().rss / 2**20
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("guard never became ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(120)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _event(n: int) -> Event:
    person = n // 3
    return Event.model_construct(
        event_id=f"e{n}",
        event_type="app_install",
        event_time=0,
        account_id=f"id-{person:010d}",
        profile_id=f"id-{person:010d}",
        device=None,
        context=None,
        user=None,
        properties={},
    )


def _lookup_ns(
    consent: ConsentTable, status: SignupStatusTable, events: list[Event], rounds: int
) -> list[int]:
    samples = []
    for _ in range(rounds):
        for event in events:
            started = time.perf_counter_ns()
            snapshot_for(event, consent, status, False)
            samples.append(time.perf_counter_ns() - started)
    return samples


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000


def main(entries: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    state_dir = work / "state"
    print(f"entries: {entries:,} (accounts, profiles, devices); work dir {work}")
    with EmbeddedBroker.start(log_path=work / "tansu.log") as broker:
        ensure_topics({"bootstrap.servers": broker.bootstrap}, ["bench.events"], ["privacy.consent"], 3)
        print(f"produced the consent topic in {_produce_state(broker.bootstrap, entries):.1f} s")
        process, port = _start_guard(broker.bootstrap, state_dir, work / "guard.log")
        cold_s, cold_rss = _time_to_ready(process, port)
        _stop(process)
        disk = _disk_bytes(state_dir)
        process, port = _start_guard(broker.bootstrap, state_dir, work / "guard.log")
        restart_s, restart_rss = _time_to_ready(process, port)
        _stop(process)
        process, port = _start_guard(broker.bootstrap, state_dir, work / "guard.log", "memory")
        memory_s, memory_rss = _time_to_ready(process, port)
        _stop(process)
        cluster_id, layout = state_topic_layout(
            {"bootstrap.servers": broker.bootstrap}, ["privacy.consent", "member.signup-status"]
        )

    topics = {"consent": layout["privacy.consent"], "signup_status": layout["member.signup-status"]}
    disk_tables = open_state_tables("rocksdb", state_dir, topics, cluster_id, StoreTuning())
    if disk_tables.stores["consent"].rebuilt_because:
        disk_tables.close()
        raise SystemExit("the benchmark could not reopen the guard's store")
    memory = ConsentTable()
    sample = min(entries, 300_000)
    for n in range(sample):
        memory.apply(_subject(n).encode(), _consent_value(n))
    rng = random.Random(7)
    working_set = [_event(3 * rng.randrange(sample // 3)) for _ in range(20_000)]
    warm = _lookup_ns(disk_tables.consent, disk_tables.signup_status, working_set, 1)  # fills the cache
    disk_ns = _lookup_ns(disk_tables.consent, disk_tables.signup_status, working_set, 5)
    memory_ns = _lookup_ns(memory, SignupStatusTable(), working_set, 5)
    cold_lookup = _percentile(warm, 0.99)
    disk_tables.close()
    added_p50 = _percentile(disk_ns, 0.5) - _percentile(memory_ns, 0.5)
    added_p99 = _percentile(disk_ns, 0.99) - _percentile(memory_ns, 0.99)

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def pct(samples: list[int]) -> str:
        return f"p50 {_percentile(samples, 0.5):.2f} µs, p99 {_percentile(samples, 0.99):.2f} µs"

    rows = [
        ("memory store start to /readyz", f"{memory_s:.1f} s, RSS {memory_rss:.0f} MiB (on every start)"),
        (
            "cold build to /readyz",
            f"{cold_s:.1f} s ({entries / cold_s:,.0f} entries/s), RSS {cold_rss:.0f} MiB",
        ),
        (
            "restart from checkpoint",
            f"{restart_s:.1f} s; target <= {RESTART_TARGET_S:.0f} s: {mark(restart_s <= RESTART_TARGET_S)}",
        ),
        (
            "RSS at ready after restart",
            f"{restart_rss:.0f} MiB; target <= {RSS_TARGET_MIB:.0f}: {mark(restart_rss <= RSS_TARGET_MIB)}",
        ),
        ("disk", f"{disk / entries:.1f} B/entry ({disk / 2**20:,.0f} MiB)"),
        ("lookups per decision, memory", pct(memory_ns)),
        ("lookups per decision, rocksdb", f"{pct(disk_ns)} (first touch p99 {cold_lookup:.1f} µs)"),
        (
            "added per decision (warm)",
            f"p50 {added_p50:.2f} µs, p99 {added_p99:.2f} µs; "
            f"target <= {LOOKUP_TARGET_US:.0f}: {mark(added_p99 <= LOOKUP_TARGET_US)}",
        ),
    ]
    for label, value in rows:
        print(f"{label + ':':32} {value}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000)
