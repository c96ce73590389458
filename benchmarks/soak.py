"""`make soak`: the guard under the demo's traffic for N minutes, with a revocation storm.

    .venv/bin/python benchmarks/soak.py --minutes 30 [--rate 0] [--out soak-results]

1. Starts the embedded broker (or uses `--bootstrap`), seeds the demo population, starts
   `partner-guard run` as a real process.
2. Measures the guard's peak on a backlog, then offers half of it (`--rate` overrides), while
   a steady stream of consent changes for existing accounts flips their choices.
3. Every 10 s samples the guard's RSS, open file descriptors, p99 end-to-end latency of the
   last interval (interpolated in the histogram buckets, as Prometheus does), state lag and
   consumer lag into `soak.csv`; draws `soak.png` at the end (matplotlib, `.[soak]` extra).
4. Fails (exit 1) when memory keeps growing (median RSS of the last quarter more than 20 %
   and 20 MB above the second quarter's), when a later minute's p99 exceeds 2x the first
   minute's, when the consumer lag keeps growing (the guard falls behind the offered rate),
   or when an input is not accounted for (forwarded + blocked per partner = in).

The embedded broker keeps every record in memory and has no retention, so on it the rate is
also capped to keep the broker under `--broker-memory-gb` for the whole run (printed when it
applies); against a real Kafka with retention the full half-peak rate runs for any length.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import TrafficGenerator
from streams.harness import histogram_buckets as buckets
from streams.harness import metric_sum as metric
from streams.harness import produce_fresh_events, read_topic, start_guard
from streams.runtime.kafka_io import produce
from streams.runtime.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
INPUT = "internal.events"
PARTNERS = ("install-attribution", "signup-conversions")
POPULATION = 20_000
PEAK_BACKLOG = 60_000
SAMPLE_S = 10.0
LATENCY = "partner_guard_end_to_end_latency_seconds"
# Raw identifiers and content a partner record must never carry (the demo generator's shapes).
FORBIDDEN = re.compile(
    rb"acct-\d|prof-\d|dev-[0-9a-f]|@|https?:|/title/|stranger things|squid game|watch_history|search_query",
    re.IGNORECASE,
)


@dataclass
class Sample:
    """One row of soak.csv."""

    t_s: float
    produced: int
    records_in: float
    rss_mb: float
    open_fds: int
    p99_s: float
    state_lag: float
    consumer_lag: float
    revocations: int


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of what was observed between two scrapes, linear within a bucket."""
    deltas = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in deltas:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


class Guard:
    """`partner-guard run` as a child process, with its resource use at hand."""

    def __init__(self, bootstrap: str, out: Path) -> None:
        env = {
            "PARTNER_GUARD_GROUP_ID": f"soak-{uuid.uuid4().hex[:8]}",
            "PARTNER_GUARD_TRANSACTIONAL_ID": f"soak-{uuid.uuid4().hex[:8]}",
            "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "soak-key-install-attribution",
            "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "soak-key-signup-conversions",
        }
        self.guard = start_guard(bootstrap, INPUT, out / "guard.log", env, cwd=ROOT)
        self.ps = psutil.Process(self.guard.process.pid)

    def metrics(self) -> str:
        """Scrape, failing loudly if the guard died."""
        if self.guard.process.poll() is not None:
            raise RuntimeError(f"guard exited: {self.guard.log()}")
        return self.guard.metrics()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until /readyz answers 200."""
        self.guard.wait_ready(timeout_s)

    def wait_consumed(self, count: int, timeout_s: float = 600.0) -> float:
        """Until records_in reaches `count`; returns the rate since the first record."""
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = metric(self.metrics(), "partner_guard_records_in_total")
            if done and first is None:
                first = (time.monotonic(), done)
            if done >= count:
                assert first is not None
                return (done - first[1]) / max(time.monotonic() - first[0], 1e-3)
            time.sleep(0.2)
        raise TimeoutError(f"consumed {done} of {count}")

    def stop(self) -> int:
        """SIGTERM and wait."""
        return self.guard.stop(60)


class Storm:
    """A steady stream of consent changes for existing accounts (latest updated_at wins)."""

    def __init__(self, generator: TrafficGenerator) -> None:
        self.accounts = [p.account_id for p in generator.people]
        self.sent = 0
        self.clock = datetime(2026, 11, 10, tzinfo=UTC)

    def next(self) -> tuple[bytes, bytes]:
        """The next change: alternately revoke and grant interest-based ads."""
        account = self.accounts[(self.sent * 7919) % len(self.accounts)]
        self.clock += timedelta(milliseconds=1)
        value = {
            "subject": f"account:{account}",
            "updated_at": self.clock.isoformat().replace("+00:00", "Z"),
            "interest_based_ads": "denied" if self.sent % 2 == 0 else "granted",
            "jurisdiction": "US-CA",
        }
        self.sent += 1
        return f"account:{account}".encode(), orjson.dumps(value)


def _read_partner_topic(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, records matching FORBIDDEN) in a partner topic, read_committed."""
    values = [record.value or b"" for record in read_topic(bootstrap, topic, idle_s=5, timeout_s=3600)]
    return len(values), sum(1 for value in values if FORBIDDEN.search(value))


def _chart(rows: list[Sample], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[soak]'): no chart")
        return False
    minutes = [r.t_s / 60 for r in rows]
    series = [
        ("RSS (MB)", [r.rss_mb for r in rows]),
        ("p99 latency (ms)", [r.p99_s * 1000 for r in rows]),
        ("state lag (records)", [r.state_lag for r in rows]),
        ("open fds", [r.open_fds for r in rows]),
    ]
    figure, axes = plt.subplots(len(series), 1, figsize=(9, 9), sharex=True)
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(minutes, values, marker=".")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    figure.suptitle("partner-guard soak")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def _verdict(rows: list[Sample], minute_p99: list[float]) -> list[str]:
    problems = []
    if len(rows) >= 8:
        quarter = len(rows) // 4
        second = statistics.median(r.rss_mb for r in rows[quarter : 2 * quarter])
        last = statistics.median(r.rss_mb for r in rows[-quarter:])
        if last > second * 1.2 and last - second > 20:
            problems.append(f"memory grows: median RSS {second:.0f} MB -> {last:.0f} MB")
        lag_second = statistics.median(r.consumer_lag for r in rows[quarter : 2 * quarter])
        lag_last = statistics.median(r.consumer_lag for r in rows[-quarter:])
        if lag_last > 2 * lag_second and lag_last > 10_000:
            problems.append(f"falls behind: consumer lag {lag_second:.0f} -> {lag_last:.0f} records")
    if minute_p99 and minute_p99[0] == minute_p99[0]:  # not NaN
        for index, value in enumerate(minute_p99[1:], start=2):
            if value > 2 * minute_p99[0]:
                problems.append(
                    f"p99 drift: minute {index} {value * 1000:.0f} ms > 2x {minute_p99[0] * 1000:.0f} ms"
                )
    return problems


def main() -> int:
    """Run the soak; exit 1 on a failed check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s (0 = half the measured peak)")
    parser.add_argument("--storm", type=float, default=50.0, help="consent changes per second")
    parser.add_argument("--out", type=Path, default=Path("soak-results"))
    parser.add_argument("--bootstrap", default="", help="an external broker instead of the embedded one")
    parser.add_argument("--broker-memory-gb", type=float, default=4.0, help="cap for the embedded broker")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    broker = None if args.bootstrap else EmbeddedBroker.start(log_path=args.out / "broker.log")
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "")
    try:
        return _soak(args, bootstrap, broker)
    finally:
        if broker is not None:
            broker.stop()


def _soak(args: argparse.Namespace, bootstrap: str, broker: EmbeddedBroker | None) -> int:
    ensure_topics({"bootstrap.servers": bootstrap}, [INPUT], ["privacy.consent", "member.signup-status"], 3)
    generator = TrafficGenerator(seed=7, population=POPULATION)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for record in generator.consent_records():
        produce(producer, "privacy.consent", record.value, record.key)
    for record in generator.signup_statuses():
        produce(producer, "member.signup-status", record.value, record.key)
    producer.flush(60)
    guard = Guard(bootstrap, args.out)
    try:
        guard.wait_ready()
        broker_ps = psutil.Process(broker.process.pid) if broker else None
        broker_before = broker_ps.memory_info().rss if broker_ps else 0
        produce_fresh_events(producer, INPUT, generator, 0, PEAK_BACKLOG)
        producer.flush(60)
        peak = guard.wait_consumed(PEAK_BACKLOG)
        produced = PEAK_BACKLOG
        rate = args.rate or peak / 2
        print(f"measured peak {peak:,.0f} records/s; offering {rate:,.0f}/s for {args.minutes:g} min")
        if broker_ps is not None:
            per_record = max(1.0, (broker_ps.memory_info().rss - broker_before) / PEAK_BACKLOG)
            cap = args.broker_memory_gb * 1e9 / per_record / (args.minutes * 60)
            if cap < rate:
                print(
                    f"embedded broker holds ~{per_record:,.0f} bytes per input: rate capped to {cap:,.0f}/s"
                )
                rate = cap
        return _steady(args, guard, producer, generator, rate, produced, bootstrap)
    finally:
        guard.stop()


def _steady(
    args: argparse.Namespace,
    guard: Guard,
    producer: Producer,
    generator: TrafficGenerator,
    rate: float,
    produced: int,
    bootstrap: str,
) -> int:
    storm = Storm(generator)
    rows: list[Sample] = []
    minute_marks: list[dict[float, float]] = []
    text = guard.metrics()
    last_buckets, start = buckets(text, LATENCY), time.monotonic()
    minute_marks.append(last_buckets)
    base_in = metric(text, "partner_guard_records_in_total")
    sent = changes = 0
    next_sample = start + SAMPLE_S
    while (elapsed := time.monotonic() - start) < args.minutes * 60:
        while sent < rate * elapsed:
            record = generator.event(epoch_ms=int(time.time() * 1000))
            produce(producer, INPUT, record.value, record.key)
            sent += 1
        while changes < args.storm * elapsed:
            key, value = storm.next()
            produce(producer, "privacy.consent", value, key)
            changes += 1
        producer.poll(0)
        if time.monotonic() >= next_sample:
            next_sample += SAMPLE_S
            text = guard.metrics()
            now_buckets = buckets(text, LATENCY)
            rows.append(
                Sample(
                    round(elapsed, 1),
                    produced + sent,
                    metric(text, "partner_guard_records_in_total"),
                    guard.ps.memory_info().rss / 1e6,
                    guard.ps.num_fds(),
                    quantile(last_buckets, now_buckets, 0.99),
                    metric(text, "partner_guard_state_lag_records"),
                    metric(text, "partner_guard_consumer_lag_records"),
                    changes,
                )
            )
            last_buckets = now_buckets
            if len(rows) % int(60 / SAMPLE_S) == 0:
                minute_marks.append(now_buckets)
            row = rows[-1]
            print(
                f"{row.t_s:7.0f}s  rss {row.rss_mb:6.1f} MB  fds {row.open_fds:3d}"
                f"  p99 {row.p99_s * 1000:6.0f} ms  state lag {row.state_lag:6.0f}"
                f"  consumer lag {row.consumer_lag:7.0f}",
                flush=True,
            )
        time.sleep(0.005)
    producer.flush(60)
    total = produced + sent
    guard.wait_consumed(total)
    time.sleep(2)
    text = guard.metrics()
    minute_p99 = [quantile(a, b, 0.99) for a, b in itertools.pairwise(minute_marks)]

    with (args.out / "soak.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(Sample.__dataclass_fields__)
        writer.writerows(
            [
                r.t_s,
                r.produced,
                r.records_in,
                f"{r.rss_mb:.1f}",
                r.open_fds,
                f"{r.p99_s:.4f}",
                r.state_lag,
                r.consumer_lag,
                r.revocations,
            ]
            for r in rows
        )
    charted = _chart(rows, args.out / "soak.png")

    problems = _verdict(rows, minute_p99)
    records_in = metric(text, "partner_guard_records_in_total")
    summary: dict[str, object] = {
        "scenario": "soak",
        "minutes": args.minutes,
        "rate": round(rate),
        "records": int(records_in),
        "revocations": changes,
    }
    lost = leaked = duplicated = 0
    for partner in PARTNERS:
        forwarded = metric(text, "partner_guard_decisions_total", partner=partner, verdict="forward")
        blocked = metric(text, "partner_guard_decisions_total", partner=partner, verdict="block")
        lost += int(total - forwarded - blocked)
        read, bad = _read_partner_topic(bootstrap, f"partner.{partner}.events")
        leaked += bad
        duplicated += max(0, read - int(forwarded))
    if lost:
        problems.append(f"{lost} decisions missing: forwarded + blocked != records produced")
    if leaked:
        problems.append(f"{leaked} forwarded records carry a raw identifier or content")
    summary |= {
        "lost": lost,
        "leaked": leaked,
        "duplicated": duplicated,
        "base_in": base_in,
        "first_minute_p99_ms": round(minute_p99[0] * 1000, 1) if minute_p99 else None,
        "max_minute_p99_ms": round(max(minute_p99) * 1000, 1) if minute_p99 else None,
        "rss_mb_first": rows[0].rss_mb if rows else None,
        "rss_mb_last": rows[-1].rss_mb if rows else None,
        "broker": "external" if args.bootstrap else "embedded (Tansu)",
        "problems": problems,
    }
    (args.out / "soak-summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary).decode())
    print(f"wrote {args.out / 'soak.csv'}" + (f" and {args.out / 'soak.png'}" if charted else ""))
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
