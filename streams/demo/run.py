"""The demo: broker, topics, a synthetic population, mixed traffic, the real guard, a summary.

The guard runs as its own process (`partner-guard run --dev`), exactly as in production;
the demo produces traffic, follows the guard's /metrics for progress, then reads every
output topic back, checks conservation, and scans the partner topics for leaks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.core.rules.loader import load_ruleset
from streams.gen.audit import find_leaks
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka_io import produce
from streams.runtime.records import partner_views
from streams.runtime.topics import ensure_topics

INPUT_TOPIC = "internal.events"
STATE_TOPICS = ("privacy.consent", "member.signup-status")
BLOCKED_TOPIC = "guard.blocked"


@dataclass
class Summary:
    """What the demo found on the output topics."""

    produced: int
    forwarded: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, Counter[str]] = field(default_factory=dict)
    blocked_records: dict[str, int] = field(default_factory=dict)
    stripped: dict[str, float] = field(default_factory=dict)
    leaks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def conserved(self) -> bool:
        """Every input ended forwarded or blocked, for every partner."""
        return all(self.forwarded[p] + self.blocked_records[p] == self.produced for p in self.forwarded)

    @property
    def leak_count(self) -> int:
        """Partner records with a finding."""
        return sum(len(v) for v in self.leaks.values())


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})


def _produce(producer: Producer, topic: str, record: KeyedRecord) -> None:
    produce(producer, topic, record.value, record.key)


def _metric(port: int, name: str, label: str = "") -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, bytes]]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    ends = {}
    for partition in metadata.topics[topic].partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
        ends[partition] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    out: list[tuple[bytes | None, dict[str, bytes]]] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 1.5:
        batch = consumer.consume(10_000, 0.3)
        for message in batch:
            if message.error() is None:
                headers = message.headers() or []
                pairs = headers.items() if isinstance(headers, dict) else headers
                out.append((message.value(), {k: v for k, v in pairs if isinstance(v, bytes)}))
        if batch:
            idle_since = time.monotonic()
    consumer.close()
    return out


def _start_guard(
    bootstrap: str, metrics_port: int, rules: Path, log_path: Path, engine: str = "kafka"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_INPUT_TOPICS": INPUT_TOPIC,
        "PARTNER_GUARD_METRICS_PORT": str(metrics_port),
        "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_BATCH_TIMEOUT_MS": "50",
        "PARTNER_GUARD_GROUP_ID": "partner-guard-demo",
        "PARTNER_GUARD_TRANSACTIONAL_ID": "partner-guard-demo-0",
        "PARTNER_GUARD_RULES_DIR": str(rules),
        # A local run on the embedded broker, whose transactions aiokafka cannot use: the Faust
        # engine runs at least once here (duplicates after a crash), acknowledged for the demo.
        "PARTNER_GUARD_FAUST_ACCEPTED_GAPS": "P8",
    }
    log = open(log_path, "wb")  # noqa: SIM115 - the child process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--create-topics", "--dev", "--engine", engine],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the guard exited:\n" + log_path.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the guard did not become ready within 60 s")


def summarize(bootstrap: str, partners: dict[str, str], produced: int, metrics_port: int) -> Summary:
    """Read every output topic back: forwarded, blocked by reason, leaks."""
    summary = Summary(produced)
    blocked = _read_all(bootstrap, BLOCKED_TOPIC)
    for partner, topic in partners.items():
        records = _read_all(bootstrap, topic)
        summary.forwarded[partner] = len(records)
        summary.leaks[partner] = [finding for value, _ in records for finding in find_leaks(value)]
        summary.stripped[partner] = _metric(
            metrics_port, "partner_guard_fields_stripped_total", f'partner="{partner}"'
        )
        summary.blocked[partner] = Counter()
        summary.blocked_records[partner] = 0
    for value, _ in blocked:  # one record per input, listing every withholding partner
        for view in partner_views(orjson.loads(value or b"{}")):
            partner = str(view.get("partner"))
            if partner in summary.blocked:
                summary.blocked_records[partner] += 1
                summary.blocked[partner].update(view.get("reasons") or ())
    return summary


def print_summary(console: Console, summary: Summary, elapsed: float) -> None:
    """The per-partner summary table and the leak-scan result."""
    table = Table(title=f"partner-guard demo: {summary.produced:,} events in {elapsed:.1f} s")
    table.add_column("partner", no_wrap=True)
    table.add_column("forwarded", justify="right")
    table.add_column("blocked", justify="right")
    table.add_column("stripped", justify="right")
    table.add_column("top block reason", overflow="fold")
    for partner, forwarded in summary.forwarded.items():
        reasons = ", ".join(f"{r} {n:,}" for r, n in summary.blocked[partner].most_common(1))
        table.add_row(
            partner,
            f"{forwarded:,}",
            f"{summary.blocked_records[partner]:,}",
            f"{summary.stripped[partner]:,.0f}",
            reasons,
        )
    console.print(table)
    for partner, counter in summary.blocked.items():
        console.print(
            f"[bold]{partner}[/bold] blocked by reason: "
            + ", ".join(f"{r}={n:,}" for r, n in sorted(counter.items())),
            highlight=False,
        )
    verdict = (
        "[green]every input forwarded or blocked, for every partner[/green]"
        if summary.conserved
        else ("[red]conservation FAILED[/red]")
    )
    console.print(f"conservation: {verdict}")
    if summary.leak_count:
        console.print(f"[red]leak scan of partner topics: {summary.leak_count} finding(s)[/red]")
    else:
        console.print(
            "[green]leak scan of partner topics: 0 leaks[/green] (no raw ids, emails, phones, IPs, "
            "URLs, titles, searches or watch history)"
        )


def run_demo(
    events: int = 20_000,
    rate: float = 0.0,
    keep_running: bool = False,
    metrics_port: int = 0,
    rules: Path = Path("rules"),
    seed: int = 7,
    engine: str = "kafka",
) -> int:
    """Run the demo end to end; returns the exit code (0 when conserved and leak-free)."""
    console = Console()
    started = time.monotonic()
    ruleset = load_ruleset(rules)
    partners = {rule.partner: rule.topic for rule in ruleset.rules}
    workdir = Path(tempfile.mkdtemp(prefix="partner-guard-demo-"))
    port = metrics_port or free_port()
    with EmbeddedBroker.start(log_path=workdir / "broker.log") as broker:
        console.print(f"embedded broker on {broker.bootstrap} (Tansu, memory only); logs in {workdir}")
        ensure_topics(
            {"bootstrap.servers": broker.bootstrap},
            [INPUT_TOPIC, *partners.values(), BLOCKED_TOPIC],
            list(STATE_TOPICS),
            3,
        )
        generator = TrafficGenerator(seed=seed, population=max(500, events // 10))
        producer = _producer(broker.bootstrap)
        seeded: Counter[str] = Counter()
        for topic, records in (
            (STATE_TOPICS[0], generator.consent_records()),
            (STATE_TOPICS[1], generator.signup_statuses()),
        ):
            for record in records:
                _produce(producer, topic, record)
                seeded[topic] += 1
        producer.flush(30)
        console.print(
            f"seeded {seeded[STATE_TOPICS[0]]:,} consent records and {seeded[STATE_TOPICS[1]]:,} "
            f"sign-up statuses for {len(generator.people):,} people"
        )
        guard = _start_guard(broker.bootstrap, port, rules, workdir / "guard.log", engine)
        try:
            _wait_ready(guard, port, workdir / "guard.log")
            console.print(f"guard ready ({engine} engine); metrics on http://127.0.0.1:{port}/metrics")
            produced = _stream(console, producer, generator, events, rate, port)
            summary = summarize(broker.bootstrap, partners, produced, port)
            print_summary(console, summary, time.monotonic() - started)
            if keep_running:
                _keep_running(console, producer, generator, rate or 200.0, port)
        finally:
            guard.send_signal(signal.SIGTERM)
            guard.wait(15)
            del producer  # disconnect before the broker stops, so librdkafka has nothing to report
    return 0 if summary.conserved and not summary.leak_count else 1


def _stream(
    console: Console, producer: Producer, generator: TrafficGenerator, events: int, rate: float, port: int
) -> int:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        sent = progress.add_task("produced", total=events)
        decided = progress.add_task("decided ", total=events)
        begin = time.monotonic()
        for index, record in enumerate(generator.events(events), start=1):
            _produce(producer, INPUT_TOPIC, record)
            if rate and index / rate > time.monotonic() - begin:
                time.sleep(max(0.0, index / rate - (time.monotonic() - begin)))
            if index % 1000 == 0:
                producer.poll(0)
                progress.update(sent, completed=index)
                progress.update(decided, completed=_metric(port, "partner_guard_records_in_total"))
        producer.flush(30)
        progress.update(sent, completed=events)
        deadline = time.monotonic() + 600
        while (
            done := _metric(port, "partner_guard_records_in_total")
        ) < events and time.monotonic() < deadline:
            progress.update(decided, completed=done)
            time.sleep(0.2)
        progress.update(decided, completed=done)
    return events


def _keep_running(
    console: Console, producer: Producer, generator: TrafficGenerator, rate: float, port: int
) -> None:
    console.print(
        f"keeps running at {rate:.0f} events/s; metrics on http://127.0.0.1:{port}/metrics — Ctrl-C stops"
    )
    try:
        while True:
            for record in generator.events(max(1, int(rate // 10))):
                _produce(producer, INPUT_TOPIC, record)
            producer.poll(0)
            time.sleep(0.1)
    except KeyboardInterrupt:
        producer.flush(10)
