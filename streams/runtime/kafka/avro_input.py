"""Avro input: find each record's writer schema, then decode it into the guard's event schema.

Records arrive in the Confluent wire format (magic byte 0, a 4-byte schema id, the Avro
body). The id says which schema the producer wrote with; a body is only ever decoded with
that writer schema resolved against the guard's own (reader) schema, never by position
under ours. Two ways to learn the writer schema:

- **Schema Registry** (`schema_registry_url`): the id is looked up with confluent-kafka's
  `SchemaRegistryClient` and the parsed result cached per id. An id the registry does not
  know blocks as `schema_unknown`; a schema the guard cannot read (another record name, a
  field the guard needs removed without a default, not Avro, a recursive schema: see
  `recursion`) blocks as `schema_incompatible`. A registry that cannot be reached blocks
  the record as `schema_unknown` too (fail closed) and is asked again after
  `RETRY_AFTER_S`; an unknown id is asked about again after `UNKNOWN_RECHECK_S`.
- **Time** (`RegistryCircuit`): the process has one circuit per registry. A lookup runs on
  its own thread and is waited for at most `registry_call_limit_s` (then given up); a
  lookup that fails or is given up opens the circuit, and while it is open every id not
  already resolved blocks at once as `schema_unknown`, with no request. After a pause
  (`RETRY_AFTER_S`, doubling up to `CIRCUIT_MAX_OPEN_S` while the registry stays down)
  one lookup is let through; an answer closes the circuit. One lookup at a time: while a
  given-up request is still pending, none other is sent. Each batch of the job may also
  send at most `MAX_FETCHES_PER_BATCH` lookups and wait at most `registry_wait_per_batch_s`
  for them in total (`FetchBudget`); an id past that blocks as `schema_unknown` and is asked
  about in a later batch. The job's heartbeat beats after every lookup.
- **Pinned** (no registry): the operator states the one id producers use
  (`avro_schema_id`) and the fingerprint of the schema behind it
  (`avro_schema_fingerprint`); start is refused when that fingerprint is not the guard's,
  and a record framed with any other id blocks as `schema_unknown`.

`decode_input` is the one way an input record is decoded by its topic's format: the job
calls it for every input, and replay and republish call it again for a blocked record's
original, with decoders built from the same settings (`ReplayAvro`), so an audit decodes
exactly as the job did — into the event schema of the ruleset that decided, which for a
record decided before a schema change is the schema of that commit.
"""

from __future__ import annotations

import graphlib
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.core.codec import decode_avro_body, decode_json, decode_json_gated, split_confluent_frame
from streams.core.models import Envelope, Event, Malformed
from streams.core.reasons import Reason
from streams.core.schema import load_schema_json, schema_fingerprint
from streams.runtime.config import Settings

log = logging.getLogger(__name__)

# A registry outage must not cost a network timeout per record: after a failed lookup the
# same id is blocked without asking again for this long.
RETRY_AFTER_S = 5.0
# An id the registry does not know may be registered later (replication between registry
# instances): it is asked about again after this long.
UNKNOWN_RECHECK_S = 60.0
# Bounds the cache of unknown ids a hostile producer could fill with made-up ids.
MAX_CACHED_UNKNOWN = 10_000
# While the registry stays down, the circuit's pause doubles from RETRY_AFTER_S up to this.
CIRCUIT_MAX_OPEN_S = 60.0
# Requests let go after CIRCUIT_MAX_OPEN_S that have still not returned: at this many, no
# more are sent (each holds a thread), until one returns.
MAX_LET_GO = 4
# One batch of the job asks the registry about at most this many new ids ...
MAX_FETCHES_PER_BATCH = 16
# ... and waits for it at most this long in total (or one whole lookup, when that is longer).
MAX_WAIT_PER_BATCH_S = 10.0
# A lookup is not sent with less than this left of the batch's wait.
MIN_LOOKUP_WAIT_S = 0.05
# The detail of a record blocked because the registry did not answer (or was not asked).
REGISTRY_UNAVAILABLE = "registry unavailable"
LOOKUPS_SPENT = "registry not asked: this batch's lookups are spent"


class SchemaLookupError(Exception):
    """The registry could not answer (network, auth, server error): not a verdict on the id."""


class NotAvroSchemaError(Exception):
    """The id names a schema of another type (Protobuf, JSON Schema)."""


class _BudgetSpentError(Exception):
    """This batch may send no more registry lookups."""


class CircuitOpenError(SchemaLookupError):
    """The circuit is open: the registry was not asked."""


def _full_name(schema: dict[str, Any], name: str | None = None) -> str:
    """A named type's full name: `namespace.name` unless the name is already dotted."""
    name = name or str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _fields_without_default(schema: dict[str, Any]) -> list[str]:
    return [f["name"] for f in schema.get("fields", []) if "default" not in f]


_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _referenced_names(body: Any, named: Container[str]) -> set[str]:
    """The named types a named type's body refers to: by name, or defined inline (not entered)."""
    found: set[str] = set()
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node in named:
                found.add(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node is not body and node.get("type") in _NAMED:
                found.add(str(node.get("name")))
                continue
            stack.extend(field.get("type") for field in node.get("fields", ()) if isinstance(field, dict))
            stack.extend(node[key] for key in ("items", "values") if key in node)
            if "type" in node:
                stack.append(node["type"])  # {"type": "x.A"} refers to x.A as "x.A" does
    return found


def recursion(parsed: Any) -> list[str] | None:
    """A cycle of named types in a parsed schema (`fastavro.parse_schema`), or None.

    A recursive schema is legal Avro, but a record under it can nest as deep as its bytes
    allow, and fastavro's C reader recurses once per level: tens of thousands of levels end
    the process with SIGSEGV, where no `except` runs. The guard's own schema is not recursive,
    so no field it reads needs one: a recursive writer schema is refused as a whole.
    """
    named: dict[str, Any] = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    graph = {name: _referenced_names(body, named) for name, body in named.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return [str(name) for name in exc.args[1]]
    return None


def incompatibility(writer: dict[str, Any], reader: dict[str, Any]) -> str | None:
    """Why `writer` records cannot be read as `reader` records, or None (checked up front).

    Avro resolution rules for the top-level record: same full name (or a reader alias),
    and every reader field without a default present in the writer. Type mismatches deeper
    down are caught per record by the decoder (`schema_incompatible` as well).
    """
    if writer.get("type") != "record":
        return "writer schema is not a record"
    reader_names = {_full_name(reader), *(_full_name(reader, alias) for alias in reader.get("aliases", []))}
    if _full_name(writer) not in reader_names:
        return f"writer record {_full_name(writer)!r} is not {_full_name(reader)!r}"
    writer_fields = {f["name"] for f in writer.get("fields", [])}
    missing = [name for name in _fields_without_default(reader) if name not in writer_fields]
    if missing:
        return f"writer schema lacks required field(s) {missing}"
    return None


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A usable writer schema, or the block it earns."""

    writer: Any | None
    reason: str | None = None
    detail: str = ""
    expires: float | None = None  # monotonic time after which a failed lookup is retried


class _Call:
    """One lookup on its own daemon thread, so that waiting for it can end before it does."""

    def __init__(self, lookup: Callable[[int], str | None], schema_id: int, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.result: str | None = None
        self.error: BaseException | None = None
        thread = threading.Thread(
            target=self._run, args=(lookup, schema_id), name="schema-registry-lookup", daemon=True
        )
        thread.start()

    def _run(self, lookup: Callable[[int], str | None], schema_id: int) -> None:
        try:
            self.result = lookup(schema_id)
        except BaseException as exc:  # handed to the waiting thread as it is
            self.error = exc
        finally:
            self.done.set()


class RegistryCircuit:
    """The Schema Registry as the whole process sees it: a circuit breaker around `lookup`.

    Closed, a lookup is sent and waited for at most `call_limit_s` (or less, when the
    caller's budget says so: then it is not a failure, but still pending). A lookup that
    raises `SchemaLookupError` or is not back within `call_limit_s` opens the circuit: for
    `RETRY_AFTER_S` at first, twice as long after each further failure, at most
    `CIRCUIT_MAX_OPEN_S`; while open, every lookup fails at once. The first lookup after the
    pause goes through; any answer from the registry (a schema, "unknown", another type)
    closes the circuit. At most one request is pending at a time: one given up still holds
    the circuit until it returns (or for `CIRCUIT_MAX_OPEN_S`, if it never does; at most
    `MAX_LET_GO` such requests, each holding a thread, are left behind).
    """

    def __init__(
        self,
        lookup: Callable[[int], str | None],
        call_limit_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lookup` as `AvroDecoder` takes it (usually `registry_lookup`)."""
        self._lookup = lookup
        self.call_limit_s = call_limit_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: _Call | None = None
        self._let_go: list[_Call] = []  # given up for good, their threads still blocked
        self._open_until: float | None = None
        self._failures = 0
        self.requests = 0  # lookups sent, for tests and logs

    @property
    def failures(self) -> int:
        """Failed lookups in a row (0 while the registry answers)."""
        with self._lock:
            return self._failures

    @property
    def is_open(self) -> bool:
        """True while lookups fail at once (the pause after a failure, or one still pending)."""
        with self._lock:
            return self._refusal(self._clock()) is not None

    def _refusal(self, now: float) -> str | None:
        pending = self._pending
        if pending is not None and not pending.done.is_set():
            if now - pending.started < CIRCUIT_MAX_OPEN_S:
                return "an earlier lookup is still waiting for the registry"
            self._let_go.append(pending)  # one that never ends is let go: its thread lives on
            self._pending = None
        self._let_go = [call for call in self._let_go if not call.done.is_set()]
        if len(self._let_go) >= MAX_LET_GO:
            return f"{len(self._let_go)} requests to the registry never returned"
        if self._open_until is not None and now < self._open_until:
            return f"circuit open for {self._open_until - now:.1f} s more"
        return None

    def __call__(self, schema_id: int, wait_s: float | None = None) -> str | None:
        """The registry's answer for `schema_id`, waited for at most `wait_s` (and the call
        limit); raises `SchemaLookupError` at once while the circuit is open."""
        with self._lock:
            refusal = self._refusal(self._clock())
            if refusal is not None:
                raise CircuitOpenError(refusal)
            call = self._pending = _Call(self._lookup, schema_id, self._clock())
            self.requests += 1
        limit = self.call_limit_s if wait_s is None else max(0.0, min(wait_s, self.call_limit_s))
        if not call.done.wait(limit):
            if limit < self.call_limit_s:  # the caller's budget ran out first: no verdict yet
                raise SchemaLookupError(f"no answer within the {limit:.1f} s left to wait")
            self._trip(f"no answer within {limit:.1f} s")
            raise SchemaLookupError(f"no answer within {limit:.1f} s")
        if isinstance(call.error, SchemaLookupError):
            self._trip(str(call.error))
            raise call.error
        self._answered()
        if call.error is not None:
            raise call.error  # NotAvroSchemaError: an answer, not an outage
        return call.result

    def _trip(self, why: str) -> None:
        with self._lock:
            self._failures += 1
            pause = min(CIRCUIT_MAX_OPEN_S, RETRY_AFTER_S * 2 ** min(self._failures - 1, 16))
            self._open_until = self._clock() + pause
        log.warning(
            "schema registry unavailable (%s): ids not yet resolved are blocked as schema_unknown "
            "without asking for %.0f s",
            why,
            pause,
        )

    def _answered(self) -> None:
        with self._lock:
            recovered, self._failures, self._open_until = self._failures > 0, 0, None
        if recovered:
            log.info("schema registry answers again: circuit closed")


@dataclass
class FetchBudget:
    """What one batch may spend on registry lookups: how many, and how long in total."""

    max_fetches: int = MAX_FETCHES_PER_BATCH
    max_wait_s: float = MAX_WAIT_PER_BATCH_S
    fetches: int = 0
    waited_s: float = 0.0

    def start_batch(self) -> None:
        """A new batch: nothing spent yet."""
        self.fetches, self.waited_s = 0, 0.0

    def allowance(self) -> float | None:
        """How long the next lookup may wait, or None when this batch may send no more (also
        when too little time is left for an answer: a request sent then would only be left
        pending, holding the circuit)."""
        left = self.max_wait_s - self.waited_s
        if self.fetches >= self.max_fetches or left < MIN_LOOKUP_WAIT_S:
            return None
        return left

    def spend(self, waited_s: float) -> None:
        """Count one lookup and its wait."""
        self.fetches += 1
        self.waited_s += max(0.0, waited_s)


class AvroDecoder:
    """Decodes Confluent-framed Avro records under their own writer schema, cached per id."""

    def __init__(
        self,
        lookup: Callable[[int], str | None],
        clock: Callable[[], float] = time.monotonic,
        reader_schema: Mapping[str, Any] | None = None,
        budget: FetchBudget | None = None,
        beat: Callable[[], None] | None = None,
    ):
        """`lookup(id)` returns the writer schema text or None when the id is unknown; it
        raises `NotAvroSchemaError` for another schema type, `SchemaLookupError` when it
        cannot tell. Records are read into `reader_schema` (default: the shipped event schema).
        A `RegistryCircuit` lookup is waited for within `budget` (per batch: `start_batch`);
        `beat` (the job's heartbeat) is called after every lookup."""
        self._lookup = lookup
        self._clock = clock
        self._budget = budget
        self._beat = beat
        self._reader_json = dict(reader_schema) if reader_schema is not None else load_schema_json()
        self._reader = fastavro.parse_schema(self._reader_json)
        self._by_id: dict[int, _Resolved] = {}

    @property
    def registry_open(self) -> bool:
        """True while this decoder's registry circuit is open (False without a registry)."""
        return isinstance(self._lookup, RegistryCircuit) and self._lookup.is_open

    def start_batch(self) -> None:
        """A new batch: its registry budget starts afresh."""
        if self._budget is not None:
            self._budget.start_batch()

    def decode(self, raw: bytes | None) -> Event | Malformed:
        """Decode one record; never raises."""
        frame = split_confluent_frame(raw)
        if isinstance(frame, Malformed):
            return frame
        resolved = self._resolve(frame.schema_id)
        if resolved.writer is None:
            return Malformed(raw or b"", resolved.detail, resolved.reason or Reason.SCHEMA_UNKNOWN)
        return decode_avro_body(raw or b"", frame.body, resolved.writer, self._reader)

    def _resolve(self, schema_id: int) -> _Resolved:
        cached = self._by_id.get(schema_id)
        if cached is not None and (cached.expires is None or self._clock() < cached.expires):
            return cached
        resolved = self._fetch(schema_id)
        if resolved.writer is None and len(self._by_id) >= MAX_CACHED_UNKNOWN:
            return resolved  # answer, but do not let made-up ids grow the cache without bound
        self._by_id[schema_id] = resolved
        return resolved

    def _ask(self, schema_id: int) -> str | None:
        """The lookup, within this batch's budget when there is one (`_BudgetSpentError` past it)."""
        lookup = self._lookup
        if not isinstance(lookup, RegistryCircuit):
            return lookup(schema_id)
        budget = self._budget
        wait_s = budget.allowance() if budget is not None else None
        if budget is not None and wait_s is None:
            raise _BudgetSpentError
        started = self._clock()
        try:
            text = lookup(schema_id, wait_s)
        except CircuitOpenError:
            raise  # not asked: nothing spent, no wait
        except BaseException:
            self._spent(started)
            raise
        self._spent(started)
        return text

    def _spent(self, started: float) -> None:
        if self._budget is not None:
            self._budget.spend(self._clock() - started)
        if self._beat is not None:
            self._beat()

    def _fetch(self, schema_id: int) -> _Resolved:
        try:
            text = self._ask(schema_id)
        except _BudgetSpentError:
            detail = f"schema id {schema_id}: {LOOKUPS_SPENT}"
            return _Resolved(None, Reason.SCHEMA_UNKNOWN, detail, self._clock() + RETRY_AFTER_S)
        except SchemaLookupError as exc:
            if not isinstance(exc, CircuitOpenError):  # (the circuit logs once when it opens)
                log.warning("schema registry lookup of id %d failed: %s", schema_id, exc)
            return _Resolved(
                None,
                Reason.SCHEMA_UNKNOWN,
                f"schema id {schema_id}: {REGISTRY_UNAVAILABLE}",
                self._clock() + RETRY_AFTER_S,
            )
        except NotAvroSchemaError as exc:
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, f"schema id {schema_id} is {exc}, not Avro")
        if text is None:
            return _Resolved(
                None,
                Reason.SCHEMA_UNKNOWN,
                f"schema id {schema_id} is unknown",
                self._clock() + UNKNOWN_RECHECK_S,
            )
        try:
            writer_json = json.loads(text)
            writer = fastavro.parse_schema(writer_json)
        except Exception:  # the registry's text is input too: any parse failure is a verdict
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, f"schema id {schema_id} is not valid Avro")
        cycle = recursion(writer)
        if cycle is not None:
            detail = f"schema id {schema_id}: writer schema is recursive ({' -> '.join(cycle)})"
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, detail)
        problem = incompatibility(writer_json, self._reader_json) if isinstance(writer_json, dict) else None
        if problem is not None or not isinstance(writer_json, dict):
            detail = f"schema id {schema_id}: {problem or 'not a record schema'}"
            return _Resolved(None, Reason.SCHEMA_INCOMPATIBLE, detail)
        log.info("schema id %d resolved (fingerprint %s)", schema_id, schema_fingerprint(writer_json)[:16])
        return _Resolved(writer)


def pinned_lookup(schema_id: int, schema: Mapping[str, Any] | None = None) -> Callable[[int], str | None]:
    """Without a registry: only `schema_id` is known, and it stands for the guard's own schema
    (`schema`, default the shipped one: the job refuses to start unless producers write with it)."""
    own = json.dumps(schema if schema is not None else load_schema_json())

    def lookup(candidate: int) -> str | None:
        return own if candidate == schema_id else None

    return lookup


def registry_lookup(client: Any) -> Callable[[int], str | None]:
    """Look ids up through a confluent-kafka `SchemaRegistryClient` (it caches by id too)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    def lookup(schema_id: int) -> str | None:
        try:
            schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise SchemaLookupError(f"HTTP {exc.http_status_code}: {exc.error_message}") from None
        except Exception as exc:  # connection refused, TLS, timeouts: the registry did not answer
            raise SchemaLookupError(type(exc).__name__) from None
        if (schema.schema_type or "AVRO") != "AVRO":
            raise NotAvroSchemaError(str(schema.schema_type))
        text: str = schema.schema_str
        return text

    return lookup


def registry_client(conf: dict[str, Any]) -> Any:
    """A Schema Registry client (`mock://...` URLs give the in-memory mock, for tests)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client(conf)


_CIRCUITS: dict[str, RegistryCircuit] = {}
_CIRCUITS_LOCK = threading.Lock()


def registry_call_limit_s(settings: Settings) -> float:
    """How long one lookup is waited for: the request timeout, and its one retry."""
    return 2 * settings.schema_registry_timeout_ms / 1000


def registry_wait_per_batch_s(settings: Settings) -> float:
    """How long one batch of the job may wait for the registry in total (0 without one)."""
    if not settings.schema_registry_url or "avro" not in settings.input_formats.values():
        return 0.0
    return max(MAX_WAIT_PER_BATCH_S, registry_call_limit_s(settings))


def registry_circuit(settings: Settings) -> RegistryCircuit:
    """The process's one circuit (and client) for the registry the settings name."""
    config = settings.registry_config()
    key = json.dumps(config, sort_keys=True, default=str)
    with _CIRCUITS_LOCK:
        circuit = _CIRCUITS.get(key)
        if circuit is None:
            lookup = registry_lookup(registry_client(config))
            circuit = _CIRCUITS[key] = RegistryCircuit(lookup, registry_call_limit_s(settings))
        return circuit


def avro_decoder(settings: Settings, beat: Callable[[], None] | None = None) -> AvroDecoder | None:
    """The decoder for the job's Avro topics (None when every input is JSON).

    With a registry, lookups go through the process's `registry_circuit` within a
    `FetchBudget` per batch (the job calls `start_batch`); `beat` is the job's heartbeat.
    """
    if "avro" not in settings.input_formats.values():
        return None
    if settings.schema_registry_url:
        budget = FetchBudget(max_wait_s=registry_wait_per_batch_s(settings))
        return AvroDecoder(registry_circuit(settings), budget=budget, beat=beat)
    if settings.avro_schema_id is not None:
        return AvroDecoder(pinned_lookup(settings.avro_schema_id))
    raise ValueError("Avro input needs schema_registry_url or avro_schema_id")  # refused by the settings


class ReplayAvro:
    """How an audit reads Avro originals: as the job did, from the job's settings.

    One decoder per reader schema, the event schema of the ruleset that decided (the
    shipped one, or a past commit's). The writer schema comes from the registry when one is
    configured; with a pinned id, or with no settings at all (an exported file read
    without them), the guard's own schema of that time is the writer — for every id when
    nothing is pinned, so a record the job could not resolve shows as a mismatch, never a
    match.
    """

    def __init__(self, settings: Settings | None) -> None:
        """Build from the job's settings (None: no registry, no pinned id)."""
        self._registry: Callable[[int], str | None] | None = None
        self._pinned_id: int | None = None
        if settings is not None and settings.schema_registry_url:
            self._registry = registry_circuit(settings)  # no budget: an audit is not a batch
        elif settings is not None:
            self._pinned_id = settings.avro_schema_id
        self._by_reader: dict[str, AvroDecoder] = {}

    @property
    def configured(self) -> bool:
        """True when built from settings naming a registry or a pinned id (as the job ran)."""
        return self._registry is not None or self._pinned_id is not None

    def decoder(self, reader_schema: Mapping[str, Any] | None = None) -> AvroDecoder:
        """The decoder into `reader_schema` (default the shipped event schema), cached."""
        key = "" if reader_schema is None else json.dumps(reader_schema, sort_keys=True)
        decoder = self._by_reader.get(key)
        if decoder is None:
            decoder = AvroDecoder(self._lookup_for(reader_schema), reader_schema=reader_schema)
            self._by_reader[key] = decoder
        return decoder

    def _lookup_for(self, reader_schema: Mapping[str, Any] | None) -> Callable[[int], str | None]:
        if self._registry is not None:
            return self._registry
        if self._pinned_id is not None:
            return pinned_lookup(self._pinned_id, reader_schema)
        own = json.dumps(reader_schema if reader_schema is not None else load_schema_json())
        return lambda _schema_id: own


def decode_input(
    raw: bytes | None, input_format: str, avro: AvroDecoder | None, receivable: Container[str] | None
) -> Event | Envelope | Malformed:
    """Decode one input record by its topic's format, the one way the job and replay share.

    Avro goes through `avro` (writer schema by id); JSON through the envelope gate when
    `receivable` is given (the event types some rule can forward), else validated in full.
    """
    if input_format == "avro" and avro is not None:
        return avro.decode(raw)
    if receivable is None:
        return decode_json(raw)
    return decode_json_gated(raw, receivable)
