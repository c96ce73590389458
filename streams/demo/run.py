"""The demo: broker, topics, a synthetic population, mixed traffic, the real guard, a summary.

The guard runs as its own process (`partner-guard run --dev`), exactly as in production;
the demo produces traffic, follows the guard's /metrics for progress, then reads every
output topic back, checks conservation, and scans the partner topics for leaks.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams import exitcodes
from streams.broker.embedded import EmbeddedBroker
from streams.core.rules.loader import load_ruleset
from streams.gen.leak_audit import find_leaks
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.harness import LOOPBACK, GuardProcess, new_producer, produce_all, read_topic, start_guard
from streams.runtime.formats.records import partner_views
from streams.runtime.kafka.io import produce
from streams.runtime.kafka.topics import ensure_topics

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
    notices: dict[str, Counter[str]] = field(default_factory=dict)  # partner -> kind -> count

    @property
    def conserved(self) -> bool:
        """Every input ended forwarded or blocked, for every partner."""
        return all(self.forwarded[p] + self.blocked_records[p] == self.produced for p in self.forwarded)

    @property
    def leak_count(self) -> int:
        """Partner records (and notices) with a finding."""
        return sum(len(v) for v in self.leaks.values())


# The share of the population that opts out (do not sell or share) after the traffic, and the
# share that asks for deletion: each partner that received data about them gets a notice.
REVOKE_SHARE, DELETE_SHARE = 0.05, 0.01


def _revocations(generator: TrafficGenerator) -> list[KeyedRecord]:
    """Opt-outs and deletions for a slice of the population, stamped now."""
    now_ms = int(time.time() * 1000)
    people = generator.people
    revoking = people[: int(len(people) * REVOKE_SHARE)]
    deleting = people[len(revoking) : len(revoking) + int(len(people) * DELETE_SHARE)]
    records = []
    for person in revoking:
        subject = f"account:{person.account_id}"
        value = {"subject": subject, "updated_at": now_ms, "interest_based_ads": "granted"}
        records.append(KeyedRecord(subject.encode(), orjson.dumps(value | {"do_not_sell_or_share": True})))
    records += [KeyedRecord(f"account:{p.account_id}".encode(), None) for p in deleting]
    return records


def send_optouts(
    console: Console, producer: Producer, generator: TrafficGenerator, guard: GuardProcess, seeded: int
) -> None:
    """Opt some people out and delete some, then wait until the guard acted on every consent record."""
    records = _revocations(generator)
    produce_all(producer, STATE_TOPICS[0], records)
    producer.flush(30)
    deadline = time.monotonic() + 120
    while _consent_changes(guard) < seeded + len(records) and time.monotonic() < deadline:
        time.sleep(0.2)
    console.print(f"sent {len(records):,} opt-outs and deletions to {STATE_TOPICS[0]}")


def _consent_changes(guard: GuardProcess) -> float:
    try:
        return guard.metric_value("partner_guard_consent_changes_total")
    except OSError:
        return 0.0


def read_notices(bootstrap: str, topics: dict[str, str], summary: Summary) -> None:
    """Count every partner's notices by kind, and scan them for leaks like partner records."""
    for partner, topic in topics.items():
        summary.notices[partner] = Counter()
        for value in _read_values(bootstrap, topic):
            summary.notices[partner][str(orjson.loads(value or b"{}").get("kind"))] += 1
            summary.leaks[partner] += find_leaks(value)


def _records_in(guard: GuardProcess) -> float:
    """Inputs the guard has decided so far (0 while its metrics do not answer)."""
    try:
        return guard.metric_value("partner_guard_records_in_total")
    except OSError:
        return 0.0


def _read_values(bootstrap: str, topic: str) -> list[bytes | None]:
    return [record.value for record in read_topic(bootstrap, topic, idle_s=1.5, timeout_s=600)]


def summarize(bootstrap: str, partners: dict[str, str], produced: int, guard: GuardProcess) -> Summary:
    """Read every output topic back: forwarded, blocked by reason, leaks."""
    summary = Summary(produced)
    blocked = _read_values(bootstrap, BLOCKED_TOPIC)
    for partner, topic in partners.items():
        values = _read_values(bootstrap, topic)
        summary.forwarded[partner] = len(values)
        summary.leaks[partner] = [finding for value in values for finding in find_leaks(value)]
        summary.stripped[partner] = guard.metric_value("partner_guard_fields_stripped_total", partner=partner)
        summary.blocked[partner] = Counter()
        summary.blocked_records[partner] = 0
    for value in blocked:  # one record per input, listing every withholding partner
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
    if summary.notices:
        sent = sum(sum(c.values()) for c in summary.notices.values())
        per_partner = "; ".join(
            f"{p} {c['opt_out']:,} opt-out, {c['deletion']:,} deletion" for p, c in summary.notices.items()
        )
        console.print(f"opt-out notices sent: {sent:,} ({per_partner})", highlight=False)
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
    notice_topics = {r.partner: r.source.optout_topic for r in ruleset.rules if r.source.optout_notices.sends}
    workdir = Path(tempfile.mkdtemp(prefix="partner-guard-demo-"))
    with EmbeddedBroker.start(log_path=workdir / "broker.log") as broker:
        console.print(f"embedded broker on {broker.bootstrap} (Tansu, memory only); logs in {workdir}")
        ensure_topics(
            {"bootstrap.servers": broker.bootstrap},
            [INPUT_TOPIC, *partners.values(), BLOCKED_TOPIC],
            list(STATE_TOPICS),
            3,
        )
        generator = TrafficGenerator(seed=seed, population=max(500, events // 10))
        producer = new_producer(broker.bootstrap)
        consents = produce_all(producer, STATE_TOPICS[0], generator.consent_records())
        statuses = produce_all(producer, STATE_TOPICS[1], generator.signup_statuses())
        producer.flush(30)
        console.print(
            f"seeded {consents:,} consent records and {statuses:,} "
            f"sign-up statuses for {len(generator.people):,} people"
        )
        guard: GuardProcess | None = None
        try:  # started inside the try: a stop signal while it starts still stops it
            guard = start_guard(
                broker.bootstrap,
                INPUT_TOPIC,
                workdir / "guard.log",
                _guard_env(rules, engine),
                dev=True,
                metrics_port=metrics_port,
            )
            guard.wait_ready()
            console.print(
                f"guard ready ({engine} engine); metrics on http://{LOOPBACK}:{guard.metrics_port}/metrics"
            )
            produced = _stream(console, producer, generator, events, rate, guard)
            if engine == "kafka":
                send_optouts(console, producer, generator, guard, consents)
            summary = summarize(broker.bootstrap, partners, produced, guard)
            if engine == "kafka":
                read_notices(broker.bootstrap, notice_topics, summary)
            print_summary(console, summary, time.monotonic() - started)
            if keep_running:
                _keep_running(console, producer, generator, rate or 200.0, guard.metrics_port)
        finally:
            if guard is not None:
                guard.stop()
            del producer  # disconnect before the broker stops, so librdkafka has nothing to report
    return exitcodes.OK if summary.conserved and not summary.leak_count else exitcodes.CHECK_FAILED


def _guard_env(rules: Path, engine: str) -> dict[str, str]:
    return {
        "PARTNER_GUARD_BATCH_TIMEOUT_MS": "50",
        "PARTNER_GUARD_GROUP_ID": "partner-guard-demo",
        "PARTNER_GUARD_TRANSACTIONAL_ID": "partner-guard-demo-0",
        "PARTNER_GUARD_RULES_DIR": str(rules),
        "PARTNER_GUARD_ENGINE": engine,
        # A local run on the embedded broker, whose transactions aiokafka cannot use: the Faust
        # engine runs at least once here (duplicates after a crash), acknowledged for the demo.
        "PARTNER_GUARD_FAUST_ACCEPTED_GAPS": "P8",
    }


def _stream(
    console: Console,
    producer: Producer,
    generator: TrafficGenerator,
    events: int,
    rate: float,
    guard: GuardProcess,
) -> int:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        sent = progress.add_task("produced", total=events)
        decided = progress.add_task("decided ", total=events)
        begin = time.monotonic()
        for index, record in enumerate(generator.events(events), start=1):
            produce(producer, INPUT_TOPIC, record.value, record.key)
            if rate and index / rate > time.monotonic() - begin:
                time.sleep(max(0.0, index / rate - (time.monotonic() - begin)))
            if index % 1000 == 0:
                producer.poll(0)
                progress.update(sent, completed=index)
                progress.update(decided, completed=_records_in(guard))
        producer.flush(30)
        progress.update(sent, completed=events)
        deadline = time.monotonic() + 600
        while (done := _records_in(guard)) < events and time.monotonic() < deadline:
            progress.update(decided, completed=done)
            time.sleep(0.2)
        progress.update(decided, completed=done)
    return events


def _keep_running(
    console: Console, producer: Producer, generator: TrafficGenerator, rate: float, port: int
) -> None:
    console.print(
        f"keeps running at {rate:.0f} events/s; metrics on http://{LOOPBACK}:{port}/metrics — Ctrl-C stops"
    )
    try:
        while True:
            for record in generator.events(max(1, int(rate // 10))):
                produce(producer, INPUT_TOPIC, record.value, record.key)
            producer.poll(0)
            time.sleep(0.1)
    except KeyboardInterrupt:
        producer.flush(10)
