"""Shared bookkeeping of the reliability scenarios: offsets, the reference decisions, the ledger.

Every scenario ends the same way: read every output with `read_committed`, map each one back
to its input, and check per partner that nothing was lost (every input has an output), nothing
leaked (every forwarded record is one the guard's own rules forward with the true state, and
none carries a forbidden value), and count duplicates. The embedded broker does not hide the
records of aborted or abandoned transactions, so each retried batch shows up as duplicates
there; on a broker with real transactions they are invisible.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.identifiers import pseudonym
from streams.core.models import Event
from streams.core.rules.loader import load_ruleset
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka.topics import ensure_topics
from streams.runtime.state.tables import ConsentTable, SignupStatusTable, snapshot_for
from tests.faultproxy import FaultProxy, broker_behind_proxy
from tests.integration import kafka_helpers
from tests.integration.engine_scenarios import FORBIDDEN
from tests.integration.kafka_helpers import (
    KEY_ENV,
    PARTNERS,
    ROOT,
    GuardProcess,
    produce,
)

# The guard's librdkafka client.id in these tests; the fault proxy aims at it.
GUARD_CLIENT_ID = "guard"
# How long the scenarios run: `short` in `make test` (the same faults, fewer records and
# repetitions), `long` in `make reliability` (the sizes the reliability table reports), `soak`
# in `make soak` (longer still). Set by PARTNER_GUARD_RELIABILITY.
LENGTH = os.environ.get("PARTNER_GUARD_RELIABILITY", "short")
if LENGTH not in ("short", "long", "soak"):
    raise ValueError(f"PARTNER_GUARD_RELIABILITY={LENGTH!r}: expected short, long or soak")
LONG, SOAK = LENGTH in ("long", "soak"), LENGTH == "soak"
TIMEOUT_S = {"short": 600, "long": 1800, "soak": 3600}[LENGTH]  # generous: many suites share two cores
HTTP_UNAVAILABLE = 503
INPUT, CONSENT_TOPIC, STATUS_TOPIC = "internal.events", "privacy.consent", "member.signup-status"
PARTNER_KEYS = {p: KEY_ENV[f"PARTNER_GUARD_KEY_{p.upper().replace('-', '_')}"].encode() for p in PARTNERS}


def guard_env(**extra: str) -> dict[str, str]:
    """Environment for a guard under test: its own client.id, short group timeouts."""
    return {
        "PARTNER_GUARD_KAFKA_CLIENT_ID": GUARD_CLIENT_ID,
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        **extra,
    }


@dataclass
class InputStream:
    """What a scenario produced to its input topic, in order: the ledger's inputs."""

    bootstrap: str
    topic: str = INPUT
    events: list[KeyedRecord] = field(default_factory=list)

    def send(self, batch: list[KeyedRecord]) -> None:
        """Produce a batch (flushed) and keep it."""
        self.events.extend(batch)
        produce(self.bootstrap, self.topic, batch)


@dataclass
class Population:
    """A seeded population: its generator and exactly the state records produced for it."""

    generator: TrafficGenerator
    consent: list[KeyedRecord]
    statuses: list[KeyedRecord]

    def allowed(
        self, events: Iterable[KeyedRecord], extra_consent: Iterable[KeyedRecord] = ()
    ) -> dict[str, set[str]]:
        """`reference_forwards` with this population's state."""
        return reference_forwards([*self.consent, *extra_consent], self.statuses, events)


def seed_state(bootstrap: str, input_topic: str, population: int, seed: int) -> Population:
    """Create the topics, produce consent and sign-up status, and keep what was produced.

    (The generator draws consent from its running random stream, so calling
    `consent_records()` again would give different records.)
    """
    ensure_topics({"bootstrap.servers": bootstrap}, [input_topic], [CONSENT_TOPIC, STATUS_TOPIC], 3)
    generator = TrafficGenerator(seed=seed, population=population)
    seeded = Population(generator, list(generator.consent_records()), list(generator.signup_statuses()))
    produce(bootstrap, CONSENT_TOPIC, seeded.consent)
    produce(bootstrap, STATUS_TOPIC, seeded.statuses)
    return seeded


def reference_forwards(
    consent: Iterable[KeyedRecord], statuses: Iterable[KeyedRecord], events: Iterable[KeyedRecord]
) -> dict[str, set[str]]:
    """Event ids each partner may receive, decided by the core with the true, final state."""
    ruleset = load_ruleset(ROOT / "rules").with_keys(PARTNER_KEYS)
    consent_table, status_table = ConsentTable(), SignupStatusTable()
    for record in consent:
        consent_table.apply(record.key or b"", record.value)
    for record in statuses:
        status_table.apply(record.key or b"", record.value)
    allowed: dict[str, set[str]] = {p: set() for p in PARTNERS}
    for event in events:
        decoded = decode_json(event.value)
        if not isinstance(decoded, Event):
            continue
        snapshot = snapshot_for(decoded, consent_table, status_table, False)
        for decision in decide(decoded, snapshot, ruleset):
            if decision.forwarded:
                allowed[decision.partner].add(decoded.event_id)
    return allowed


@dataclass
class Ledger:
    """Per partner: inputs lost, forwarded records leaked, duplicate outputs."""

    scenario: str
    records: int
    lost: Counter[str] = field(default_factory=Counter)
    leaked: Counter[str] = field(default_factory=Counter)
    duplicated: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    blocked_reasons: Counter[str] = field(default_factory=Counter)
    broker: str = "embedded (Tansu)"
    notes: list[str] = field(default_factory=list)

    def report(self) -> None:
        """Print the ledger (and append it to $PARTNER_GUARD_RELIABILITY_LOG for the README table)."""
        line = {
            "scenario": self.scenario,
            "records": self.records,
            "lost": sum(self.lost.values()),
            "leaked": sum(self.leaked.values()),
            "duplicated": sum(self.duplicated.values()),
            "per_partner": {
                p: {"lost": self.lost[p], "leaked": self.leaked[p], "duplicated": self.duplicated[p]}
                for p in PARTNERS
            },
            "broker": self.broker,
            "notes": self.notes,
        }
        print(f"\nRELIABILITY {orjson.dumps(line).decode()}")
        print(
            f"  {self.scenario}: {sum(self.duplicated.values())} duplicate outputs, all visible only "
            "because the embedded broker does not hide records of aborted transactions"
        )
        target = os.environ.get("PARTNER_GUARD_RELIABILITY_LOG")
        if target:
            with Path(target).open("ab") as out:
                out.write(orjson.dumps(line) + b"\n")

    def assert_sound(self) -> None:
        """Nothing lost, nothing leaked."""
        assert sum(self.lost.values()) == 0, (self.scenario, dict(self.lost))
        assert sum(self.leaked.values()) == 0, (self.scenario, dict(self.leaked))


def account(
    bootstrap: str,
    scenario: str,
    events: list[KeyedRecord],
    allowed: dict[str, set[str]],
    blocked_topic: str = "guard.blocked",
    keys: Mapping[str, bytes] = PARTNER_KEYS,
    blocked_id: Callable[[str], str | None] = lambda event_id: event_id,
) -> Ledger:
    """Read every output (read_committed) and fill the ledger; see the module docstring."""
    decoded = [decode_json(e.value) for e in events]
    ids = {d.event_id for d in decoded if isinstance(d, Event)}
    malformed = len(decoded) - len(ids)
    ledger = Ledger(scenario, len(events))
    outputs: dict[str, Counter[str]] = {p: Counter() for p in PARTNERS}
    with ThreadPoolExecutor(len(PARTNERS) + 1) as pool:  # the reads overlap
        blocked_views = pool.submit(kafka_helpers.read_blocked, bootstrap, blocked_topic)
        partner_topics = {
            p: pool.submit(kafka_helpers.read_topic, bootstrap, f"partner.{p}.events") for p in PARTNERS
        }
    for partner in PARTNERS:
        back = {pseudonym(keys[partner], "event_id", i): i for i in ids}
        for _, value, _ in partner_topics[partner].result():
            text = (value or b"").decode("utf-8", "replace")
            event_id = back.get(orjson.loads(value or b"{}").get("event_id"), "?")
            outputs[partner][event_id] += 1
            ledger.forwarded[partner] += 1
            if event_id not in allowed[partner] or FORBIDDEN.search(text):
                ledger.leaked[partner] += 1
    blocked_back = {blocked_id(i): i for i in ids}  # redacted/encrypted modes hash the event id
    for blocked in blocked_views.result():  # one view per (input, partner)
        source = blocked["source"]
        key = blocked_back.get(blocked["event_id"]) or f"offset:{source['partition']}:{source['offset']}"
        outputs[blocked["partner"]][key] += 1
        ledger.blocked_reasons.update(blocked["reasons"])
    for partner in PARTNERS:
        seen = set(outputs[partner])
        by_offset = {k for k in seen if k.startswith("offset:")}
        ledger.lost[partner] = len(ids - seen) + max(0, malformed - len(by_offset))
        ledger.duplicated[partner] = sum(n - 1 for n in outputs[partner].values() if n > 1)
    return ledger


class Supervisor:
    """Keeps a guard running the way a process supervisor with a liveness probe does.

    A guard that exits, or whose `/healthz` fails (its loop stopped beating), is killed and
    started again; each restart is recorded with its cause.
    """

    def __init__(self, start: Callable[[], GuardProcess]) -> None:
        self._start = start
        self.guard = start()
        self.restarts: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                guard = self.guard
                exited = guard.process.poll()
                if exited is None and guard.status("/healthz") != HTTP_UNAVAILABLE:
                    continue
                cause = f"exit {exited}" if exited is not None else "liveness (/healthz 503)"
                if exited is None:
                    guard.process.kill()
                    guard.process.wait()
                self.restarts.append(cause)
                self.guard = self._start()

    def stop(self) -> int:
        """Stop watching and SIGTERM the current guard; returns its exit code."""
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            return self.guard.stop()


def consent_record(account: str, interest_based_ads: str, updated_at: str) -> KeyedRecord:
    """A consent record for `account:<account>`."""
    subject = f"account:{account}"
    value = {"subject": subject, "updated_at": updated_at, "interest_based_ads": interest_based_ads}
    return KeyedRecord(subject.encode(), orjson.dumps(value))


def installs(account: str, count: int, prefix: str) -> list[KeyedRecord]:
    """App installs an attribution partner receives while the account's consent is granted."""
    event = {
        "event_type": "app_install",
        "event_time": 1_795_000_000_000,
        "account_id": account,
        "device": {"platform": "ios"},
        "context": {"country": "US"},
    }
    return [
        KeyedRecord(account.encode(), orjson.dumps(event | {"event_id": f"{prefix}-{i}"}))
        for i in range(count)
    ]


@dataclass
class Scenario:
    """One fault scenario's preamble and ledger: its broker, consumer group and directory, the
    seeded population, and every input it sent, in order (`events`).

    `start()` starts `partner-guard run` on the input topic in the scenario's group, with
    `guard_env()` and the group as its transactional id unless told otherwise; `conclude()`
    reads every output back into the ledger, prints it and asserts nothing was lost or leaked.
    """

    bootstrap: str
    tmp_path: Path
    group: str
    seeded: Population
    stream: InputStream

    @classmethod
    def seed(cls, bootstrap: str, tmp_path: Path, group: str, population: int, seed: int) -> Scenario:
        """Create the topics and seed the state of a generated population (`seed_state`)."""
        seeded = seed_state(bootstrap, INPUT, population, seed)
        return cls(bootstrap, tmp_path, group, seeded, InputStream(bootstrap))

    @property
    def events(self) -> list[KeyedRecord]:
        """Every input sent so far, in order."""
        return self.stream.events

    def generate(self, count: int) -> list[KeyedRecord]:
        """`count` more events of the population (not sent)."""
        return list(self.seeded.generator.events(count))

    def send(self, batch: list[KeyedRecord]) -> None:
        """Produce inputs (flushed) and keep them for the ledger."""
        self.stream.send(batch)

    def produce(self, topic: str, records: Iterable[KeyedRecord]) -> None:
        """Produce records that are not inputs (consent, sign-up status)."""
        produce(self.bootstrap, topic, records)

    def start(self, env: dict[str, str] | None = None, transactional_id: str | None = None) -> GuardProcess:
        """Start a guard in the scenario's group (`guard_env()` unless `env` is given)."""
        return kafka_helpers.start_guard(
            self.bootstrap,
            self.tmp_path,
            INPUT,
            self.group,
            guard_env() if env is None else env,
            transactional_id=transactional_id or self.group,
        )

    def committed_offsets(self) -> dict[int, int]:
        """The group's committed input offset per partition."""
        return kafka_helpers.committed_offsets(self.bootstrap, self.group, INPUT)

    def committed(self) -> int:
        """The group's committed input offsets, summed over the partitions."""
        return sum(self.committed_offsets().values())

    def wait_all_committed(self, timeout_s: float = 240.0, guards: Iterable[GuardProcess] = ()) -> None:
        """Block until the group has committed every input sent (`wait_all_committed`)."""
        kafka_helpers.wait_all_committed(
            self.bootstrap, self.group, INPUT, len(self.events), timeout_s, guards
        )

    def account(self, name: str, allowed: dict[str, set[str]], **options: Any) -> Ledger:
        """The ledger of every input sent (`account`), without judging it."""
        return account(self.bootstrap, name, self.events, allowed, **options)

    def conclude(self, name: str, allowed: dict[str, set[str]], *notes: str, **options: Any) -> Ledger:
        """The ledger of every input sent, with `notes`: printed, then nothing lost or leaked."""
        return conclude(self.account(name, allowed, **options), *notes)


def conclude(ledger: Ledger, *notes: str) -> Ledger:
    """Add the notes, print the ledger and assert nothing was lost or leaked."""
    ledger.notes.extend(notes)
    ledger.report()
    ledger.assert_sound()
    return ledger


@contextmanager
def proxied_scenario(
    tmp_path: Path, group: str, population: int, seed: int, client_id: str = GUARD_CLIENT_ID
) -> Iterator[tuple[Scenario, FaultProxy]]:
    """A seeded scenario on a fresh broker that advertises a fault proxy aimed at the clients
    named `client_id` (the guard's, by default), and the proxy."""
    with broker_behind_proxy(tmp_path / "tansu.log", client_id) as (broker, proxy):
        yield Scenario.seed(broker.bootstrap, tmp_path, group, population, seed), proxy
