"""The feature matrix: one short scenario, run in every cell of engine x state store x workers x
input format x payload mode (`test_matrix.py` runs it; `make matrix` writes docs/matrix.md).

A cell is one combination of settings; the scenario is a list of named steps, run in order
against a fresh embedded broker and the real `partner-guard run` process:

    seed         topics, consent and sign-up status for a small population (and, for Avro
                 input, a Schema Registry serving the event schema and a few others)
    start        the guard, until /readyz
    traffic      generated events (the generator's own malformed ones included)
    poison       one record of each hostile class (undecodable bytes, duplicate keys, deep
                 nesting, a huge key, wrong types; for Avro also a bad frame, an unknown
                 schema id and a writer schema with wrong types)
    revocation   read-your-revocation: each revocation acknowledged, then at once an event
                 of its subject; control subjects' events alongside
    restart      SIGTERM mid-stream (exit 0), more traffic and revocations while it is down,
                 start again, until every input is committed
    store_intact (rocksdb cells) no guard found a store of this run damaged
    conservation every input ends, for every partner, forwarded or blocked (lost = none);
                 each poison record blocked for every partner; duplicates counted
    leaks        the independent leak audit (`streams.gen.leak_audit`) over every partner
                 record, and every forwarded record one the core forwards with the true state
    read_your_revocation  revoked subjects' later events blocked, controls' forwarded
    replay       `partner-guard replay` over the blocked topic: exit 0, every record matches
                 (or is unverifiable because its original was dropped for size)
    stop         SIGTERM: exit 0

then the probes, each run whatever the others did:

    reference_mode   (reference cells) inputs no rule can receive kept by reference
    replay_tampered  altered blocked records replayed from a file: never a pass
    avro_depth       (Avro cells) a record nesting a recursive writer-only field 50,000 deep:
                     blocked, the guard alive, and replay still exits 0

A new capability joins as an axis (a field of `Cell` and a value list in `AXES`) or as a step
(a function in `STEPS` or `PROBES`). A combination the settings refuse is pruned in `refusal`, with the
refusal it meets. A step that fails because of a known, named bug is reported as
`KnownBugError` so the test can mark exactly that cell and step `xfail(strict=True)`.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.broker.embedded import EmbeddedBroker
from streams.core.codec import decode_json, encode_avro
from streams.core.identifiers import pseudonym
from streams.core.models import Event
from streams.core.schema import load_schema_json
from streams.gen.leak_audit import find_leaks
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.harness import GuardProcess, new_producer
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    PARTNERS,
    ROOT,
    committed_offsets,
    read_blocked,
    read_topic,
    start_guard,
    wait_all_committed,
)
from tests.integration.records import app_install, consent
from tests.integration.reliability import PARTNER_KEYS, reference_forwards
from tests.integration.test_operations import REGISTRY_USER, FakeRegistry

INPUT = "internal.events"
STATE_TOPICS = ["privacy.consent", "member.signup-status"]
# Sizes: a few hundred records a cell, so the pairwise subset fits `make test`.
POPULATION, TRAFFIC_BEFORE, TRAFFIC_WHILE_DOWN = 300, 300, 150
REVOKED, CONTROLS = 8, 8  # read-your-revocation subjects per round (two rounds)
AVRO_DEPTH = 50_000
HUGE_KEY_BYTES = 950_000
SCHEMA_IDS = {"event": 11, "added_field": 12, "wrong_types": 14, "recursive": 15}
UNKNOWN_SCHEMA_ID = 4242
# Replay outcomes that are not failures: a match, or a record whose original was dropped for size.
REPLAY_OK = frozenset({"match", "unverifiable"})
TIMEOUT_S = 240.0  # a hang guard per wait on a loaded machine, never a timing assertion


# ---- the cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One combination of the axes."""

    engine: str
    store: str
    workers: int
    input_format: str
    payload: str

    @property
    def id(self) -> str:
        """A short, stable name: `kafka-rocksdb-w2-avro-reference`."""
        return f"{self.engine}-{self.store}-w{self.workers}-{self.input_format}-{self.payload}"

    def env(self) -> dict[str, str]:
        """The guard settings of this cell (without the registry, which `Run` adds)."""
        env = {
            "PARTNER_GUARD_STATE_STORE": self.store,
            "PARTNER_GUARD_WORKERS": str(self.workers),
            "PARTNER_GUARD_BLOCKED_ORIGINAL": "reference" if self.payload == "reference" else "copy",
            "PARTNER_GUARD_MAX_RECORD_BYTES": "40000",
        }
        if self.input_format == "avro":
            env["PARTNER_GUARD_INPUT_FORMATS"] = f"{INPUT}=avro"
        return env


# Axis name (a field of Cell) -> its values, in the order cells are listed.
AXES: dict[str, tuple[Any, ...]] = {
    "engine": ("kafka", "faust"),
    "store": ("memory", "rocksdb"),
    "workers": (1, 2),
    "input_format": ("json", "avro"),
    "payload": ("full", "reference"),
}


def refusal(cell: Cell) -> str | None:
    """Why the settings refuse this combination at start (the cell is pruned), or None."""
    if cell.engine == "faust" and cell.workers > 1:
        return (
            "`--workers` starts kafka-engine processes; the Faust engine refuses it at start "
            "(scale Faust by starting more workers)"
        )
    return None


def every_cell() -> list[Cell]:
    """Every combination of the axes, refused ones included."""
    return [Cell(*values) for values in itertools.product(*AXES.values())]


def valid_cells() -> list[Cell]:
    """Every combination the settings accept."""
    return [cell for cell in every_cell() if refusal(cell) is None]


def _pairs(cell: Cell) -> set[tuple[tuple[str, Any], tuple[str, Any]]]:
    values = [(name, getattr(cell, name)) for name in AXES]
    return set(itertools.combinations(values, 2))


def cost(cell: Cell) -> float:
    """What a cell costs `make test`: Faust cells run one after another on the Faust worker
    (with test_faust.py) and decide slower."""
    return 1.5 if cell.engine == "faust" else 1.0


def pairwise_cells(cells: Sequence[Cell] | None = None) -> list[Cell]:
    """A small subset of `cells` covering every pair of axis values some cell covers.

    Deterministic greedy: take the cell covering the most pairs not yet covered per unit of
    `cost` (the first one in `cells` order on a tie) until every coverable pair is covered;
    cells a known bug takes down whole (`KnownBug.steps` None) only for pairs no other cell
    has, so the subset proves as much as it can while the bug stands (and still flags it once
    fixed).
    """
    pool = list(cells if cells is not None else valid_cells())
    uncovered = set().union(*(_pairs(c) for c in pool))
    whole_run_bug = {c for c in pool for bug in KNOWN_BUGS if bug.steps is None and bug.applies(c)}
    chosen: list[Cell] = []
    for candidates in ([c for c in pool if c not in whole_run_bug], pool):
        while candidates:
            best = max(candidates, key=lambda c: len(_pairs(c) & uncovered) / cost(c))  # first on a tie
            if not _pairs(best) & uncovered:
                break
            chosen.append(best)
            uncovered -= _pairs(best)
    return chosen


# ---- known bugs -------------------------------------------------------------------------------


class KnownBugError(AssertionError):
    """A step failed where a named, reported bug makes it fail (the test marks it xfail)."""


@dataclass(frozen=True)
class KnownBug:
    """A bug that makes a step fail in the cells it applies to. A failure is put down to it
    only when `evidence` (a regular expression) is found in the error or the guard's logs."""

    name: str
    applies: Callable[[Cell], bool]
    steps: frozenset[str] | None  # None: any step (the bug takes the whole run down)
    evidence: str


KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        "found by the matrix: `blocked_original: reference` keeps a full copy of every Avro input "
        "no rule can receive (only JSON inputs are decoded to an envelope and kept by reference)",
        lambda c: c.payload == "reference" and c.input_format == "avro",
        frozenset({"reference_mode"}),
        r"avro input at .* kept as a copy|kept as a copy: \['avro input",
    ),
)


def known_bug(cell: Cell, step: str | None = None, seen: str | None = None) -> KnownBug | None:
    """The known bug that makes `step` (any step: None) fail in `cell`, if any; with `seen`
    (the error and the logs), only one whose evidence is in it."""
    for bug in KNOWN_BUGS:
        if not bug.applies(cell) or (step is not None and bug.steps is not None and step not in bug.steps):
            continue
        if seen is None or re.search(bug.evidence, seen):
            return bug
    return None


# ---- the inputs -------------------------------------------------------------------------------


@dataclass
class Input:
    """One record produced to the input topic, and what the scenario knows about it."""

    role: str  # traffic | poison:<class> | revoked | control
    record: KeyedRecord  # as produced (JSON or Avro)
    twin: bytes | None  # the same event as JSON (what the reference decision reads)
    event_id: str | None  # None: not decodable, found by its position
    position: tuple[int, int] | None = None  # (partition, offset) once delivered
    reasons: frozenset[str] | None = None  # poison: the block reasons it may get (None: any)


@dataclass
class Row:
    """A cell's line of the result table."""

    cell: str
    inputs: int = 0
    forwarded: int = 0
    blocked: int = 0
    lost: int = 0
    leaked: int = 0
    replay_mismatches: int = 0
    duplicates: int = 0
    replayed: dict[str, int] = field(default_factory=dict)
    failed_step: str | None = None
    known_bug: str | None = None  # the named bug the failure was put down to
    error: str | None = None
    seconds: float = 0.0


def _avro_schemas() -> dict[int, dict[str, Any]]:
    """What the scenario's registry serves: the event schema, a later revision with an added
    optional field, one with a field of the wrong type, one with a recursive writer-only field
    (legal Avro)."""
    own = load_schema_json()
    added = copy.deepcopy(own)
    added["fields"].append({"name": "experiment", "type": ["null", "string"], "default": None})
    wrong = copy.deepcopy(own)
    for spec in wrong["fields"]:
        if spec["name"] == "event_time":
            spec["type"] = "boolean"
    recursive = copy.deepcopy(own)
    tree = {
        "type": "record",
        "name": "Tree",
        "fields": [{"name": "child", "type": ["null", "Tree"], "default": None}],
    }
    recursive["fields"].append({"name": "tree", "type": ["null", tree], "default": None})
    return {
        SCHEMA_IDS["event"]: own,
        SCHEMA_IDS["added_field"]: added,
        SCHEMA_IDS["wrong_types"]: wrong,
        SCHEMA_IDS["recursive"]: recursive,
    }


class Encoder:
    """Writes scenario events in the cell's input format."""

    def __init__(self, input_format: str) -> None:
        self.avro = input_format == "avro"
        self.written = 0
        self.schemas = {i: fastavro.parse_schema(s) for i, s in _avro_schemas().items()}

    def event(self, key: bytes | None, event: dict[str, Any], role: str) -> Input:
        """A valid event in the cell's format; every third Avro event written under the later
        schema revision (its added field set: the guard's reader schema drops it)."""
        twin = orjson.dumps(event)
        if not self.avro:
            return Input(role, KeyedRecord(key, twin), twin, str(event["event_id"]))
        self.written += 1
        if self.written % 3 == 0:
            later = SCHEMA_IDS["added_field"]
            value = encode_avro(event | {"experiment": "b"}, self.schemas[later], later)
        else:
            value = encode_avro(event, self.schemas[SCHEMA_IDS["event"]], SCHEMA_IDS["event"])
        return Input(role, KeyedRecord(key, value), twin, str(event["event_id"]))

    def generated(self, record: KeyedRecord) -> Input:
        """A generator record: valid events re-encoded, its malformed bytes kept as they are."""
        decoded = decode_json(record.value)
        if isinstance(decoded, Event):
            return self.event(record.key, orjson.loads(record.value or b""), "traffic")
        return Input("traffic", record, record.value, None)

    def poison(self) -> list[Input]:
        """One record of each hostile class, each blocked for every partner."""
        malformed = frozenset({"malformed"})
        base = app_install("mx-poison", "mx-nobody")
        deep = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
        records = [
            ("undecodable", KeyedRecord(b"mx-nobody", b"\xff\xfe\x00\x01"), malformed),
            (
                "duplicate_keys",
                KeyedRecord(
                    b"mx-nobody", b'{"event_id":"mx-dup","event_id":"mx-dup2","event_type":"app_install"}'
                ),
                malformed,
            ),
            (
                "deep_nesting",
                KeyedRecord(
                    b"mx-nobody", orjson.dumps(base | {"event_id": "mx-deep"})[:-1] + b',"x":' + deep + b"}"
                ),
                malformed,
            ),
            (
                "wrong_types",
                KeyedRecord(
                    b"mx-nobody",
                    orjson.dumps(base | {"event_id": "mx-types", "device": [1], "event_time": True}),
                ),
                malformed,
            ),
        ]
        inputs = [Input(f"poison:{name}", rec, None, None, reasons=why) for name, rec, why in records]
        # a huge key on a valid event (the account has no consent: blocked for both partners)
        inputs.append(
            self.event(b"k" * HUGE_KEY_BYTES, base | {"event_id": "mx-huge-key"}, "poison:huge_key")
        )
        if self.avro:
            good = encode_avro(
                base | {"event_id": "mx-frame"}, self.schemas[SCHEMA_IDS["event"]], SCHEMA_IDS["event"]
            )
            unknown = encode_avro(
                base | {"event_id": "mx-unknown"}, self.schemas[SCHEMA_IDS["event"]], UNKNOWN_SCHEMA_ID
            )
            wrong = encode_avro(
                base | {"event_id": "mx-wrong", "event_time": True},
                self.schemas[SCHEMA_IDS["wrong_types"]],
                SCHEMA_IDS["wrong_types"],
            )
            inputs += [
                Input(
                    "poison:avro_bad_frame",
                    KeyedRecord(b"mx-nobody", good[:9]),
                    None,
                    None,
                    reasons=malformed,
                ),
                Input(
                    "poison:avro_unknown_schema_id",
                    KeyedRecord(b"mx-nobody", unknown),
                    None,
                    None,
                    reasons=frozenset({"schema_unknown"}),
                ),
                Input(
                    "poison:avro_wrong_types",
                    KeyedRecord(b"mx-nobody", wrong),
                    None,
                    None,
                    reasons=frozenset({"schema_incompatible"}),
                ),
            ]
        return inputs

    def deep_avro(self) -> Input:
        """An event written under the recursive schema, its `tree` nested AVRO_DEPTH deep.

        Hand-encoded (a writer would recurse as deep): `tree` is the last field, so the body
        of the same event with `tree: null` ends in its null branch (0x00); each level is the
        union's second branch (0x02), the innermost `child` null.
        """
        event = app_install("mx-avro-deep", "mx-nobody")
        body = encode_avro(
            event | {"tree": None}, self.schemas[SCHEMA_IDS["recursive"]], SCHEMA_IDS["recursive"]
        )
        value = body[:-1] + b"\x02" * AVRO_DEPTH + b"\x00"
        return Input(
            "poison:avro_depth",
            KeyedRecord(b"mx-nobody", value),
            None,
            None,
            reasons=frozenset({"malformed", "schema_incompatible"}),
        )


# ---- the run ----------------------------------------------------------------------------------


def _produce(bootstrap: str, inputs: Sequence[Input], one_by_one: bool = False) -> None:
    """Produce inputs, keeping where each landed; `one_by_one` waits for each acknowledgement."""
    producer = new_producer(bootstrap, **{"message.max.bytes": 2_000_000})
    failures: list[str] = []

    def delivered(item: Input) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{item.role}: {error}")
            else:
                item.position = (int(message.partition() or 0), int(message.offset() or 0))

        return report

    for item in inputs:
        while True:
            try:
                producer.produce(INPUT, item.record.value, item.record.key, on_delivery=delivered(item))
                break
            except BufferError:
                producer.poll(0.05)
        if one_by_one:
            assert producer.flush(30) == 0
    assert producer.flush(60) == 0 and not failures, failures


def _wait(condition: Callable[[], bool], what: str, guard: GuardProcess | None = None) -> None:
    """Poll until `condition` holds (a hang guard: TIMEOUT_S, never a timing assertion)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if guard is not None and guard.process.poll() is not None:
            raise AssertionError(
                f"guard exited with {guard.process.returncode} waiting for {what}: {guard.log()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Run:
    """One cell's scenario: the broker, the guard, what was produced and what came out."""

    def __init__(self, cell: Cell, broker: EmbeddedBroker, tmp_path: Path) -> None:
        self.cell, self.broker, self.tmp = cell, broker, tmp_path
        self.bootstrap = broker.bootstrap
        self.group = f"mx-{cell.id}-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
        self.env = {**cell.env(), "PARTNER_GUARD_STATE_DIR": str(tmp_path / "state")}
        self.encoder = Encoder(cell.input_format)
        self.registry: FakeRegistry | None = None
        self.guard: GuardProcess | None = None
        self.inputs: list[Input] = []
        self.consent: list[KeyedRecord] = []
        self.statuses: list[KeyedRecord] = []
        self.generator = TrafficGenerator(seed=31, population=POPULATION)
        self.row = Row(cell.id)
        self.forwarded: dict[str, list[bytes]] = {}
        self.blocked: list[dict[str, Any]] = []
        self.outcomes: dict[str, list[list[str]]] = {}  # partner -> per input: "forward" / reasons
        self.phantoms: list[str] = []  # outputs that map to no input

    # -- helpers --

    def start(self) -> GuardProcess:
        """Start the guard with the cell's settings, until /readyz."""
        guard = start_guard(
            self.bootstrap,
            self.tmp,
            INPUT,
            self.group,
            extra_env=self.env,
            transactional_id=f"mx-{self.cell.id}" if self.cell.engine == "kafka" else None,
            engine=self.cell.engine,
        )
        guard.wait_ready(timeout_s=TIMEOUT_S)
        return guard

    def send(self, inputs: list[Input], one_by_one: bool = False) -> None:
        self.inputs.extend(inputs)
        _produce(self.bootstrap, inputs, one_by_one)

    def send_state(self, topic: str, records: list[KeyedRecord]) -> None:
        (self.consent if topic == STATE_TOPICS[0] else self.statuses).extend(records)
        producer = new_producer(self.bootstrap)
        for record in records:
            producer.produce(topic, record.value, record.key)
        assert producer.flush(30) == 0

    def committed_all(self) -> None:
        guard = self.guard
        wait_all_committed(
            self.bootstrap, self.group, INPUT, len(self.inputs), TIMEOUT_S, [guard] if guard else []
        )

    def revocation_round(self, name: str) -> list[Input]:
        """Grant-then-revoke subjects and controls: each revocation acknowledged before its
        subject's event is produced."""
        revoked = [f"mx-{name}-r{i}" for i in range(REVOKED)]
        controls = [f"mx-{name}-c{i}" for i in range(CONTROLS)]
        self.send_state(STATE_TOPICS[0], [consent(a, "granted") for a in revoked + controls])
        events: list[Input] = []
        for account in revoked:
            self.send_state(STATE_TOPICS[0], [consent(account, "denied")])
            item = self.encoder.event(account.encode(), app_install(f"mx-ev-{account}", account), "revoked")
            self.send([item], one_by_one=True)
            events.append(item)
        controls_events = [
            self.encoder.event(a.encode(), app_install(f"mx-ev-{a}", a), "control") for a in controls
        ]
        self.send(controls_events)
        return events + controls_events

    def replay(self, report: Path, *args: str) -> tuple[int, Counter[str], str]:
        """`partner-guard replay` with the job's settings: exit code, outcomes by status, output tail."""
        env = {**os.environ, **self.env, "PARTNER_GUARD_BOOTSTRAP_SERVERS": self.bootstrap}
        if self.registry is not None:
            env |= self._registry_env()
        done = subprocess.run(
            [sys.executable, "-m", "streams", "replay", "--no-git", "--jsonl", str(report), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        rows = [orjson.loads(line) for line in report.read_bytes().splitlines()] if report.exists() else []
        return done.returncode, Counter(r["status"] for r in rows), (done.stdout + done.stderr)[-3000:]

    def _registry_env(self) -> dict[str, str]:
        assert self.registry is not None
        return {
            "PARTNER_GUARD_SCHEMA_REGISTRY_URL": self.registry.url,
            "PARTNER_GUARD_SCHEMA_REGISTRY_BASIC_AUTH": REGISTRY_USER,
            "PARTNER_GUARD_SCHEMA_REGISTRY_TIMEOUT_MS": "60000",  # a loaded machine is slow, not down
        }

    def read_outputs(self) -> None:
        """Every partner record and blocked view, mapped back to its input."""
        self.forwarded = {
            p: [v or b"" for _, v, _ in read_topic(self.bootstrap, f"partner.{p}.events")] for p in PARTNERS
        }
        self.blocked = read_blocked(self.bootstrap)
        by_position = {i.position: n for n, i in enumerate(self.inputs)}
        self.outcomes = {p: [[] for _ in self.inputs] for p in PARTNERS}
        for partner in PARTNERS:
            by_pseudonym = {
                pseudonym(PARTNER_KEYS[partner], "event_id", i.event_id): n
                for n, i in enumerate(self.inputs)
                if i.event_id
            }
            for value in self.forwarded[partner]:
                n = by_pseudonym.get(orjson.loads(value).get("event_id"))
                if n is None:
                    self.phantoms.append(f"{partner}: a forwarded record of no input")
                else:
                    self.outcomes[partner][n].append("forward")
        for view in self.blocked:
            source = view["source"]
            n = by_position.get((source["partition"], source["offset"]))
            if n is None or view["partner"] not in self.outcomes:
                self.phantoms.append(f"blocked record of no input at {source}")
            else:
                self.outcomes[view["partner"]][n].append(",".join(view["reasons"]))
        self.row.inputs = len(self.inputs)
        self.row.forwarded = sum(len(v) for v in self.forwarded.values())
        self.row.blocked = len(self.blocked)


# ---- the steps --------------------------------------------------------------------------------


def seed(run: Run) -> None:
    ensure_topics({"bootstrap.servers": run.bootstrap}, [INPUT], STATE_TOPICS, 3)
    run.send_state(STATE_TOPICS[0], list(run.generator.consent_records()))
    run.send_state(STATE_TOPICS[1], list(run.generator.signup_statuses()))
    if run.cell.input_format == "avro":
        run.registry = FakeRegistry(_avro_schemas())
        threading.Thread(target=run.registry.serve_forever, daemon=True).start()
        run.env |= run._registry_env()


def start(run: Run) -> None:
    run.guard = run.start()


def traffic(run: Run) -> None:
    run.send([run.encoder.generated(r) for r in run.generator.events(TRAFFIC_BEFORE)])


def poison(run: Run) -> None:
    run.send(run.encoder.poison())


def revocation(run: Run) -> None:
    run.revocation_round("a")


def restart(run: Run) -> None:
    """SIGTERM mid-stream, more input (and revocations) while down, start again, drain.

    A two-worker cell restarts in a fresh consumer group that starts at exactly the offsets
    the stopped workers committed (read back from the broker, committed again under the new
    group id): the embedded broker's group coordinator stalls (minutes, no member assigned)
    when members rejoin a group that last had two, seen with plain confluent-kafka consumers
    and no guard code (docs/matrix.md, "Where the embedded broker limits the matrix").
    """
    guard = run.guard
    assert guard is not None
    half = len(run.inputs) // 2
    _wait(lambda: guard.metric_value("partner_guard_records_in_total") >= half, "half the input", guard)
    code = guard.stop(timeout_s=120)
    assert code == 0, f"SIGTERM: exit {code}: {guard.log()}"
    if run.cell.workers > 1:
        run.group = _moved_group(run.bootstrap, run.group)
    run.send([run.encoder.generated(r) for r in run.generator.events(TRAFFIC_WHILE_DOWN)])
    run.revocation_round("b")
    run.guard = run.start()
    run.committed_all()
    run.read_outputs()


def _moved_group(bootstrap: str, group: str) -> str:
    """A new consumer group holding exactly the committed input offsets of `group`."""
    offsets = committed_offsets(bootstrap, group, INPUT)
    moved = f"{group}-restarted"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": moved, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(INPUT, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()
    assert committed_offsets(bootstrap, moved, INPUT) == offsets
    return moved


def store_intact(run: Run) -> None:
    """Disk-store cells: no guard of this run found a store of this run damaged (nothing here
    damages one: SIGTERM closes it cleanly, so a store that "cannot be opened" was broken by
    the guard itself)."""
    if run.cell.store != "rocksdb":
        return
    damaged = [
        line[:300]
        for path in sorted(run.tmp.glob("guard-*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "cannot be opened" in line
    ]
    assert not damaged, damaged[:4]


def conservation(run: Run) -> None:
    lost: list[str] = []
    misdecided: list[str] = []  # a poison record forwarded, or blocked for another reason
    for partner in PARTNERS:
        for item, outcome in zip(run.inputs, run.outcomes[partner], strict=True):
            if not outcome:
                lost.append(f"{partner}: {item.role} {item.event_id or item.position}")
            run.row.duplicates += max(0, len(outcome) - 1)
            reasons = {r for o in outcome for r in o.split(",")}
            if item.role.startswith("poison:") and "forward" in outcome:
                misdecided.append(f"{partner}: {item.role} was forwarded")
            elif item.role.startswith("poison:") and item.reasons and outcome and not reasons & item.reasons:
                misdecided.append(
                    f"{partner}: {item.role} blocked as {sorted(reasons)}, not {sorted(item.reasons)}"
                )
    run.row.lost = len(lost)
    assert not lost and not misdecided and not run.phantoms, (lost[:10], misdecided, run.phantoms[:10])


def leaks(run: Run) -> None:
    events = [KeyedRecord(i.record.key, i.twin) for i in run.inputs if i.event_id and i.twin]
    allowed = reference_forwards(run.consent, run.statuses, events)
    leaked: list[str] = []
    for partner in PARTNERS:
        for value in run.forwarded[partner]:
            found = find_leaks(value)
            if found:
                leaked.append(f"{partner}: {found[:3]}")
        for item, outcome in zip(run.inputs, run.outcomes[partner], strict=True):
            if "forward" in outcome and item.event_id not in allowed[partner]:
                leaked.append(f"{partner}: {item.role} {item.event_id} forwarded, not forwarded by the core")
    run.row.leaked = len(leaked)
    forwarded = sum(len(v) for v in run.forwarded.values())
    assert forwarded > 0, "nothing was forwarded: the scenario proves nothing"
    assert not leaked, leaked[:10]


def read_your_revocation(run: Run) -> None:
    partner = "install-attribution"
    wrong: list[str] = []
    for item, outcome in zip(run.inputs, run.outcomes[partner], strict=True):
        if item.role == "revoked" and not (
            outcome and all("consent_interest_based_ads_denied" in o for o in outcome)
        ):
            wrong.append(f"revoked {item.event_id}: {outcome}")
        if item.role == "control" and "forward" not in outcome:
            wrong.append(f"control {item.event_id}: {outcome}")
    assert sum(1 for i in run.inputs if i.role == "revoked") == 2 * REVOKED
    assert not wrong, wrong


def replay(run: Run) -> None:
    code, statuses, output = run.replay(run.tmp / "replay.jsonl")
    run.row.replayed = dict(statuses)
    run.row.replay_mismatches = sum(n for status, n in statuses.items() if status not in REPLAY_OK)
    assert sum(statuses.values()) == len(run.blocked), (dict(statuses), len(run.blocked), output)
    assert code == 0 and run.row.replay_mismatches == 0, (code, dict(statuses), output)


def replay_tampered(run: Run) -> None:
    """Blocked records altered after the fact, replayed from an exported file: never a pass.

    Every cell: a record whose reasons were rewritten must be a mismatch. Reference cells: a
    reference moved past the partition's end must be `invalid_record` (`source_expired` is
    only for offsets below the log start). (Not here: a reference to a partition the topic
    does not have, which today makes replay wait 120 s and exit 2, "could not run".)
    """
    views = read_blocked(run.bootstrap)
    candidates = sorted(views, key=lambda v: v["payload_mode"] != "full")  # a copy first, if any
    forged = copy.deepcopy(next(v for v in candidates if v["reasons"] != ["consent_gpc"]))
    forged["reasons"] = ["consent_gpc"]
    tampered = [("reasons rewritten", forged, {"mismatch"})]
    reference = next((v for v in views if v["payload_mode"] == "reference"), None)
    if reference is not None:  # (the reference_mode probe says when there should be one)
        future = copy.deepcopy(reference)
        future["source"]["offset"] += 1_000_000
        tampered.append(("reference past the end", future, {"invalid_record"}))
    exported = run.tmp / "tampered.jsonl"
    exported.write_bytes(b"".join(orjson.dumps(view) + b"\n" for _, view, _ in tampered))
    report = run.tmp / "replay-tampered.jsonl"
    code, _, output = run.replay(report, "--from-file", str(exported))
    rows = [orjson.loads(line) for line in report.read_bytes().splitlines()] if report.exists() else []
    got = [row["status"] for row in rows]
    wrong = [
        f"{what}: {status}"
        for (what, _, wanted), status in zip(tampered, got, strict=False)
        if status not in wanted
    ]
    assert len(got) == len(tampered) and not wrong and code != 0, (code, got, wrong, output)


def reference_mode(run: Run) -> None:
    """Reference cells: an input no rule can receive (blocked for every partner, only as
    `event_type_not_allowed`) is kept by reference, never as a copy of the original."""
    if run.cell.payload != "reference":
        return
    by_input: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for view in read_blocked(run.bootstrap):
        by_input.setdefault((view["source"]["partition"], view["source"]["offset"]), []).append(view)
    copied = [
        f"{views[0]['source']['format']} input at {partition}:{offset}"
        for (partition, offset), views in sorted(by_input.items())
        if len(views) == len(PARTNERS)
        and all(v["reasons"] == ["event_type_not_allowed"] for v in views)
        and any(v["payload_mode"] != "reference" for v in views)
    ]
    assert not copied, f"{len(copied)} inputs no rule can receive kept as a copy: {copied[:3]}"


def avro_depth(run: Run) -> None:
    """Avro only: the guard again, the recursive writer schema's record, then replay again."""
    if run.cell.input_format != "avro":
        return
    if run.cell.workers > 1:  # the embedded broker's two-member rejoin stall (see `restart`)
        run.group = _moved_group(run.bootstrap, run.group)
    run.guard = run.start()
    deep = run.encoder.deep_avro()
    run.send([deep])
    run.committed_all()
    guard = run.guard
    assert guard.process.poll() is None, guard.log()
    views = [
        v
        for v in read_blocked(run.bootstrap)
        if (v["source"]["partition"], v["source"]["offset"]) == deep.position
    ]
    assert sorted(v["partner"] for v in views) == sorted(PARTNERS), views
    assert deep.reasons is not None and all(set(v["reasons"]) & deep.reasons for v in views), views
    code, statuses, output = run.replay(run.tmp / "replay-deep.jsonl")
    assert code == 0 and set(statuses) <= REPLAY_OK, (code, dict(statuses), output)
    stop(run)


def stop(run: Run) -> None:
    guard = run.guard
    assert guard is not None
    code = guard.stop(timeout_s=120)
    run.guard = None
    assert code == 0, f"exit {code}: {guard.log()}"


STEPS: tuple[tuple[str, Callable[[Run], None]], ...] = (
    ("seed", seed),
    ("start", start),
    ("traffic", traffic),
    ("poison", poison),
    ("revocation", revocation),
    ("restart", restart),
    ("store_intact", store_intact),
    ("conservation", conservation),
    ("leaks", leaks),
    ("read_your_revocation", read_your_revocation),
    ("replay", replay),
    ("stop", stop),
)
# Probes after the scenario: each runs whatever the others did (one failing does not hide the
# next), so a cell a known bug breaks in one probe still reports the rest.
PROBES: tuple[tuple[str, Callable[[Run], None]], ...] = (
    ("reference_mode", reference_mode),
    ("replay_tampered", replay_tampered),
    ("avro_depth", avro_depth),
)


def run_cell(cell: Cell, broker: EmbeddedBroker, tmp_path: Path) -> Row:
    """Run the steps in order (the first failure ends the cell), then every probe.

    A failure names its step; it is a `KnownBugError` only when every failure is put down to a
    known bug by its evidence. The row is printed (`MATRIX {...}`) and appended to
    $PARTNER_GUARD_TEST_MATRIX_LOG either way.
    """
    run = Run(cell, broker, tmp_path)
    started = time.monotonic()
    failures: list[tuple[str, str, KnownBug | None]] = []  # step, message, known bug
    try:
        for name, step in (*STEPS, *PROBES):
            if failures and (name not in dict(PROBES) or failures[0][0] not in dict(PROBES)):
                break  # a failed step ends the cell; a failed probe does not end the probes
            print(f"[{cell.id}] {time.monotonic() - started:6.1f} s: {name}", flush=True)
            try:
                step(run)
            except Exception as exc:
                failures.append(_failure(run, name, exc))
                if run.guard is not None and name in dict(PROBES):
                    run.guard.stop(timeout_s=60)
                    run.guard = None
            except BaseException as exc:  # a pytest timeout: the row still names the step
                run.row.failed_step = name
                run.row.error = f"{type(exc).__name__}: {exc}"[:2000]
                raise
    finally:
        if run.guard is not None:
            run.guard.stop(timeout_s=60)
        if run.registry is not None:
            run.registry.shutdown()
        run.row.seconds = round(time.monotonic() - started, 1)
        if failures:
            run.row.failed_step = ", ".join(name for name, _, _ in failures)
            run.row.error = "\n".join(message for _, message, _ in failures)[:4000]
            bugs = [bug for _, _, bug in failures]
            if all(bugs):
                run.row.known_bug = "; ".join(dict.fromkeys(bug.name for bug in bugs if bug))
        _report(run.row)
    if failures:
        message = "\n\n".join(message for _, message, _ in failures)
        if run.row.known_bug:
            raise KnownBugError(f"{message}\n(known bug: {run.row.known_bug})")
        raise AssertionError(message)
    return run.row


def _failure(run: Run, name: str, exc: Exception) -> tuple[str, str, KnownBug | None]:
    """A failed step: its message (with the guard's log tail) and the known bug it shows, if any."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    logs = "\n".join(path.read_text(errors="replace") for path in sorted(run.tmp.glob("guard-*.log")))
    bug = known_bug(run.cell, name, f"{error}\n{logs}")
    message = f"cell {run.cell.id}: step '{name}' failed: {error}"
    if run.guard is not None:
        message += f"\nguard log (tail):\n{run.guard.log()}"
    return name, message, bug


def _report(row: Row) -> None:
    line = orjson.dumps(asdict(row))
    print(f"\nMATRIX {line.decode()}")
    target = os.environ.get("PARTNER_GUARD_TEST_MATRIX_LOG")
    if target:
        with Path(target).open("ab") as out:
            out.write(line + b"\n")


# ---- the table --------------------------------------------------------------------------------

TABLE_START, TABLE_END = "<!-- matrix-table:start -->", "<!-- matrix-table:end -->"
COLUMNS = ("inputs", "forwarded", "blocked", "lost", "leaked", "replay_mismatches", "duplicates")


def render_table(rows: Iterator[dict[str, Any]]) -> str:
    """The result table in Markdown: one line per cell (the last row logged for it)."""
    last = {row["cell"]: row for row in rows}
    header = (
        "| cell | in | forwarded | blocked | lost | leaked | replay mismatches | duplicates | result | s |"
    )
    lines = [header, "|" + "---|" * 10]
    for cell in every_cell():
        why = refusal(cell)
        if why is not None:
            lines.append(f"| {cell.id} | pruned: {why} |" + " |" * 8)
            continue
        row = last.get(cell.id)
        if row is None:
            lines.append(f"| {cell.id} | not run |" + " |" * 8)
            continue
        result = "pass" if row["failed_step"] is None else f"**failed at `{row['failed_step']}`**"
        if row.get("known_bug"):
            result += f" (known bug: {row['known_bug'].split(':')[0]})"
        values = " | ".join(f"{row[c]:,}" for c in COLUMNS)
        lines.append(f"| {cell.id} | {values} | {result} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def write_table(log: Path, doc: Path) -> None:
    """Replace the table between the markers of `doc` with the rows of `log`."""
    rows = (orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip())
    text = doc.read_text()
    before, rest = text.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    doc.write_text(f"{before}{TABLE_START}\n{render_table(rows)}\n{TABLE_END}{after}")


if __name__ == "__main__":  # python -m tests.integration.matrix LOG DOC
    write_table(Path(sys.argv[1]), Path(sys.argv[2]))
