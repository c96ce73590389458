"""`make soak`: the guard under the demo's traffic for N minutes, with a revocation storm.

    .venv/bin/python benchmarks/soak.py --minutes 30 [--rate 0] [--out soak-results]

1. Starts the embedded broker (or uses `--bootstrap`), seeds the demo population, starts
   `partner-guard run` as a real process.
2. Measures the guard's peak on a backlog, then offers half of it (`--rate` overrides), while
   a steady stream of consent changes for existing accounts flips their choices.
3. Every 10 s samples the guard's RSS, open file descriptors, p99 end-to-end latency of the
   last interval (interpolated in the histogram buckets, as Prometheus does), state lag,
   consumer lag, the guard's CPU use and the machine's load average into `soak.csv`; draws
   `soak.png` at the end (matplotlib, `.[soak]` extra).
4. Fails (exit 1) when memory keeps growing, when p99 drifts, when the guard falls behind, or
   when an input is not accounted for (forwarded + blocked per partner = in). Growth is
   judged on the second half of the run, after warm-up, and must be sustained: memory grows
   when RSS rises (least squares) by more than 10 MB and 5 % of its median beyond what the
   growth of the consumer lag explains (1 KiB a record: librdkafka prefetches the lag) in
   the third quarter *and* in the fourth; the guard falls behind when the consumer lag grows
   (least squares) by more than 30 s of input over the second half. A leak grows at a steady
   rate; a backlog on a busy
   machine raises RSS once (the prefetch queue, and freed memory the allocator keeps) and
   then it stays flat. The longer the run, the smaller the leak it resolves: 10 MB a quarter
   is 80 MB/h in 30 minutes. p99 drifts when the median of the second half's per-minute p99
   exceeds 2x the first minute's. The memory and lag checks need a run of 4 minutes or more.

The embedded broker keeps every record in memory and has no retention, so on it the rate is
also capped to keep the broker under `--broker-memory-gb` for the whole run (printed when it
applies); against a real Kafka with retention the full half-peak rate runs for any length.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
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
from streams.runtime.kafka.io import produce
from streams.runtime.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
INPUT = "internal.events"
PARTNERS = ("install-attribution", "signup-conversions")
POPULATION = 20_000
# The peak is measured on a backlog this long: on a shorter one librdkafka has prefetched most
# of it into memory before the first batch, and the rate reads up to twice the steady state.
PEAK_BACKLOG = 200_000
SAMPLE_S = 10.0
# Memory a record of consumer lag may hold in librdkafka's prefetch queue (~480-byte events
# plus the client's per-message overhead, rounded up).
PREFETCH_BYTES_PER_RECORD = 1024
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
    guard_cpu_pct: float
    load1: float


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

    def metrics(self, attempts: int = 3) -> str:
        """Scrape, failing loudly if the guard died (a starved guard may miss one 5 s scrape)."""
        for attempt in range(1, attempts + 1):
            if self.guard.process.poll() is not None:
                raise RuntimeError(f"guard exited: {self.guard.log()}")
            try:
                return self.guard.metrics()
            except OSError:
                if attempt == attempts:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

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


def _cpu_s(guard: Guard) -> float:
    """CPU seconds the guard process has used."""
    times = guard.ps.cpu_times()
    return float(times.user + times.system)


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
        ("consumer lag (records)", [r.consumer_lag for r in rows]),
        ("open fds", [r.open_fds for r in rows]),
        ("guard CPU (%)", [r.guard_cpu_pct for r in rows]),
    ]
    figure, axes = plt.subplots(len(series), 1, figsize=(9, 12), sharex=True)
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(minutes, values, marker=".")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    figure.suptitle("partner-guard soak")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def _slope_per_s(rows: list[Sample], value: Callable[[Sample], float]) -> float:
    """Least-squares slope of a sampled value, per second."""
    if len(rows) < 2 or len({r.t_s for r in rows}) < 2:
        return 0.0
    return statistics.linear_regression([r.t_s for r in rows], [value(r) for r in rows]).slope


def _unexplained_growth_mb(rows: list[Sample]) -> float:
    """RSS growth over the samples (least squares) beyond what a growing backlog explains.

    librdkafka prefetches the consumer lag into memory (up to `queued.max.messages.kbytes`),
    so each record the lag grows by may hold up to `PREFETCH_BYTES_PER_RECORD`.
    """
    span = rows[-1].t_s - rows[0].t_s
    rss = _slope_per_s(rows, lambda r: r.rss_mb) * span
    lag = _slope_per_s(rows, lambda r: r.consumer_lag) * span
    return rss - max(0.0, lag) * PREFETCH_BYTES_PER_RECORD / 1e6


def _verdict(rows: list[Sample], minute_p99: list[float], rate: float) -> list[str]:
    """The long-run checks, each on the second half of the run (see the module docstring)."""
    problems: list[str] = []
    quarter = len(rows) // 4
    third, fourth = rows[2 * quarter : 3 * quarter], rows[3 * quarter :]
    if quarter >= 6:  # four minutes of samples: a minute in each judged quarter
        median_rss = statistics.median(r.rss_mb for r in third + fourth)
        grown = [_unexplained_growth_mb(q) for q in (third, fourth)]
        if all(g > max(10.0, 0.05 * median_rss) for g in grown):
            minutes = (fourth[-1].t_s - third[0].t_s) / 60
            problems.append(
                f"memory grows: RSS +{grown[0]:.0f} then +{grown[1]:.0f} MB more than the backlog "
                f"explains in the last two quarters ({minutes:.0f} min, median {median_rss:.0f} MB)"
            )
        half = third + fourth  # the lag, unlike RSS, comes back down when the guard catches up
        lag = _slope_per_s(half, lambda r: r.consumer_lag) * (half[-1].t_s - half[0].t_s)
        if lag > max(30 * rate, 5_000):
            problems.append(
                f"falls behind: consumer lag +{lag:,.0f} records over the second half "
                f"({half[0].consumer_lag:,.0f} -> {half[-1].consumer_lag:,.0f})"
            )
    later = [p for p in minute_p99[len(minute_p99) // 2 :] if p == p]  # not NaN
    if minute_p99 and minute_p99[0] == minute_p99[0] and later:
        drift = statistics.median(later)
        if drift > 2 * minute_p99[0]:
            problems.append(
                f"p99 drift: median {drift * 1000:.0f} ms over the second half's minutes "
                f"> 2x the first minute's {minute_p99[0] * 1000:.0f} ms"
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
    cpu_before = _cpu_s(guard)
    next_sample = start + SAMPLE_S
    while (elapsed := time.monotonic() - start) < args.minutes * 60:
        sent = produce_fresh_events(producer, INPUT, generator, sent, rate * elapsed)
        while changes < args.storm * elapsed:
            key, value = storm.next()
            produce(producer, "privacy.consent", value, key)
            changes += 1
        producer.poll(0)
        if time.monotonic() >= next_sample:
            next_sample += SAMPLE_S
            cpu_now = _cpu_s(guard)
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
                    round(100 * (cpu_now - cpu_before) / SAMPLE_S, 1),
                    os.getloadavg()[0],
                )
            )
            last_buckets, cpu_before = now_buckets, cpu_now
            if len(rows) % int(60 / SAMPLE_S) == 0:
                minute_marks.append(now_buckets)
            row = rows[-1]
            print(
                f"{row.t_s:7.0f}s  rss {row.rss_mb:6.1f} MB  fds {row.open_fds:3d}"
                f"  p99 {row.p99_s * 1000:6.0f} ms  state lag {row.state_lag:6.0f}"
                f"  consumer lag {row.consumer_lag:7.0f}"
                f"  cpu {row.guard_cpu_pct:5.1f}%  load {row.load1:5.2f}",
                flush=True,
            )
        time.sleep(0.005)
    producer.flush(60)
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
                r.guard_cpu_pct,
                r.load1,
            ]
            for r in rows
        )
    charted = _chart(rows, args.out / "soak.png")
    total = produced + sent
    backlog = total - metric(guard.metrics(), "partner_guard_records_in_total")
    print(f"draining a backlog of {backlog:,.0f} records before the final count", flush=True)
    guard.wait_consumed(total, timeout_s=max(600.0, backlog / max(rate / 4, 1.0)))
    time.sleep(2)
    text = guard.metrics()

    problems = _verdict(rows, minute_p99, rate)
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
        "rss_mb_unexplained_last_quarters": [
            round(_unexplained_growth_mb(q), 1)
            for q in (rows[2 * (len(rows) // 4) : 3 * (len(rows) // 4)], rows[3 * (len(rows) // 4) :])
            if len(q) >= 2
        ],
        "guard_cpu_pct_median": statistics.median(r.guard_cpu_pct for r in rows) if rows else None,
        "load1_median": statistics.median(r.load1 for r in rows) if rows else None,
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
