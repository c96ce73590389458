"""The work every engine shares: the state tables, deciding one input, and a batch's metrics.

Both engines (the confluent-kafka job in `runtime/pipeline/job.py`, the Faust app in
`streams/engines/faust_app.py`) own only their Kafka loop and their delivery; what leaves,
and in which format, is decided here, once:

- `GuardState`: the consent and sign-up tables fed from their compacted topics — loaded
  before the first decision (readiness), caught up before each batch (read-your-revocation),
  and judged stale past the configured bounds (`consent_stale`, fail closed);
- `RecordDecider.emit`: decode by the topic's format (JSON through the envelope gate, or
  Avro) → snapshot → `decide` for every partner → the forwarded records and at most one
  blocked record (format v2) → the engine's `Sink`; an exception anywhere in between is
  contained as `internal_error` for every partner of that input;
- `BatchTally`: one batch's counts, added to the metrics once the batch is delivered.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.decide import consults_state, decide, receivable_types
from streams.core.models import Decision, Envelope, Event, Malformed, StateSnapshot
from streams.core.reasons import Reason
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import Settings
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import (
    CONTAINED_ERROR_DETAIL,
    BlockedInput,
    DecisionsPart,
    DecisionsParts,
    SourceRef,
    Withheld,
    blocked_input,
    blocked_record,
    content_blocked_record,
    partner_headers,
    partner_record,
)
from streams.runtime.kafka.avro_input import AvroDecoder, avro_decoder, decode_input
from streams.runtime.kafka.io import Headers
from streams.runtime.ops.metrics import GuardMetrics, observe_all
from streams.runtime.pipeline.notices import ForwardTracker
from streams.runtime.state.layout import open_configured_tables
from streams.runtime.state.reader import Applier, StateReader, StateTopicChangedError
from streams.runtime.state.store import StateTables, report_store_metrics
from streams.runtime.state.tables import ConsentTable, ForwardedTable, SignupStatusTable, snapshot_for

log = logging.getLogger(__name__)
# Why 200: undeclared field paths are chosen by whoever produces the input; past this many
# distinct ones they are counted as "_other" so the metric's label set stays bounded.
MAX_UNDECLARED_LABELS = 200
NO_STATE = {False: StateSnapshot(stale=False), True: StateSnapshot(stale=True)}  # decisions read no state

_DECODED = (Event, Envelope)  # a tuple: `isinstance` with `Event | Envelope` builds the union each call

# Where an engine sends one output record: (topic, value, key, headers).
Sink = Callable[[str, bytes, bytes | None, Headers | None], None]


@dataclass
class BatchTally:
    """Counts of one batch, added to the metrics only once the batch is delivered."""

    records_in: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    blocked: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    stripped: Counter[str] = field(default_factory=Counter)
    undeclared: Counter[str] = field(default_factory=Counter)
    timestamps_ms: list[int] = field(default_factory=list)
    notices: Counter[tuple[str, str]] = field(default_factory=Counter)  # (partner, kind)
    consent_changes: int = 0
    notice_errors: int = 0  # consent records whose notices could not be built
    # Inputs whose decisions are one shared list (the gated ones), counted per list: expanded
    # into `blocked` once per batch.
    shared: Counter[tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=Counter)

    def add(self, outputs: _Outputs) -> None:
        """Count the decisions of one input's outputs."""
        if outputs.shared_blocks is not None:
            self.shared[outputs.shared_blocks] += 1
            return
        for decision in outputs.forwarded:
            self.forwarded[decision.partner] += 1
            if decision.stripped:
                self.stripped[decision.partner] += len(decision.stripped)
        for entry in outputs.withheld:  # reasons are expanded into metrics once per batch
            self.blocked[(entry.decision.partner, entry.reasons)] += 1

    def apply(self, metrics: GuardMetrics, batch_seconds: float) -> None:
        """Add this batch to the metrics."""
        for blocks, inputs in self.shared.items():
            for partner_reasons in blocks:
                self.blocked[partner_reasons] += inputs
        self.shared.clear()
        for topic, count in self.records_in.items():
            metrics.records_in.labels(topic).inc(count)
        for partner, count in self.forwarded.items():
            metrics.decisions.labels(partner, "forward").inc(count)
        reasons: Counter[tuple[str, str]] = Counter()
        for (partner, why), count in self.blocked.items():
            metrics.decisions.labels(partner, "block").inc(count)
            for reason in why:
                reasons[(partner, reason)] += count
            if Reason.LEAK_DETECTED in why:
                metrics.leaks_caught.labels(partner).inc(count)
        for (partner, reason), count in reasons.items():
            metrics.block_reasons.labels(partner, reason).inc(count)
        for partner, count in self.stripped.items():
            metrics.fields_stripped.labels(partner).inc(count)
        for path, count in self.undeclared.items():
            metrics.undeclared_fields.labels(path).inc(count)
        for (partner, kind), count in self.notices.items():
            metrics.optout_notices.labels(partner, kind).inc(count)
        if self.consent_changes:
            metrics.consent_changes.labels("read").inc(self.consent_changes)
        if self.notice_errors:
            metrics.consent_changes.labels("error").inc(self.notice_errors)
        now_ms = time.time() * 1000
        observe_all(metrics.end_to_end_seconds, [max(0.0, (now_ms - ts) / 1000) for ts in self.timestamps_ms])
        metrics.batch_seconds.observe(batch_seconds)


class OutputTooLargeError(Exception):
    """An output record (key and value) would exceed `max_record_bytes`."""


@dataclass(slots=True)
class _Outputs:
    """The records one input produces, built completely before any is produced."""

    records: list[tuple[str, bytes, bytes | None, Headers | None]] = field(default_factory=list)
    forwarded: list[Decision] = field(default_factory=list)
    withheld: list[Withheld] = field(default_factory=list)
    # (partner, reasons) of `withheld` when they are the decider's shared ones (a gated input)
    shared_blocks: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    markers: list[tuple[bytes, bytes]] | None = None  # forwarded-marker writes (key, value)

    def add(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, limit: int) -> None:
        if len(value) + len(key or b"") > limit:
            raise OutputTooLargeError(topic)
        self.records.append((topic, value, key, headers))


class GuardState:
    """The consent and sign-up status tables, and the reader that keeps them current."""

    def __init__(self, settings: Settings, kafka_config: dict[str, Any], metrics: GuardMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tables = StateTables(ConsentTable(), SignupStatusTable())
        self.consent, self.signup_status = self.tables.consent, self.tables.signup_status
        self._kafka_config = kafka_config
        self._invalid_reported: dict[str, int] = {}
        self._reader: StateReader | None = None
        self.track_forwards = False  # also read the forwarded topic (opt-out notices on)
        self._load_args: tuple[Callable[[], bool], Callable[[], None]] = (lambda: False, lambda: None)
        # Told False while the state is read again from the beginning, True after (readiness).
        self.on_reload: Callable[[bool], None] = lambda _ready: None

    @property
    def forwarded(self) -> ForwardedTable:
        """The forwarded markers and notice state (read from the forwarded topic)."""
        return self.tables.forwarded

    @property
    def reader(self) -> StateReader:
        """The state-topic reader (after `load`)."""
        if self._reader is None:
            raise RuntimeError("state not loaded")
        return self._reader

    def load(self, stopping: Callable[[], bool], beat: Callable[[], None]) -> StateReader:
        """Read both compacted topics to their end before anything is decided (readiness)."""
        settings = self.settings
        self._load_args = (stopping, beat)
        self.tables = open_configured_tables(settings, self._kafka_config, self.track_forwards)
        self.consent, self.signup_status = self.tables.consent, self.tables.signup_status
        for name, table_store in self.tables.stores.items():
            if table_store.rebuilt_because is not None:
                self.metrics.state_rebuilds.labels(name).inc()
        appliers: dict[str, Applier] = {
            settings.consent_topic: self.consent.apply,
            settings.signup_status_topic: self.signup_status.apply,
        }
        if self.track_forwards:
            appliers[settings.forwarded_topic] = self.tables.forwarded.apply
        reader = self._reader = StateReader(
            self._kafka_config,
            appliers,
            self.metrics,
            start_offsets=self.tables.start_offsets(),
            checkpoint=self.tables.checkpoint if self.tables.stores else None,
        )

        def keep_going() -> bool:
            beat()
            return not stopping()

        reader.load(settings.state_catchup_timeout_ms / 1000, keep_going)
        self.update_gauges()
        log.info(
            "state loaded: %d consent entries, %d sign-up statuses",
            len(self.consent),
            len(self.signup_status),
        )
        return reader

    def catch_up_before_batch(self, now: float) -> bool:
        """Catch up to the state topics' current ends; call it after the batch was fetched (P9).

        `now` is monotonic seconds. Returns True when the state is stale: more records missing
        than allowed, or no complete catch-up for longer than allowed; the batch is then
        blocked as `consent_stale` (fail closed).
        """
        settings = self.settings
        try:
            missing = self.reader.catch_up(settings.state_catchup_timeout_ms / 1000)
        except StateTopicChangedError as exc:
            self._reload(exc)
            missing = self.reader.catch_up(settings.state_catchup_timeout_ms / 1000)
        reader = self.reader
        stale = missing > settings.max_state_lag_records or (
            now - reader.last_caught_up > settings.max_state_silence_ms / 1000
        )
        if stale:
            log.warning("state is behind by %d record(s): blocking this batch as consent_stale", missing)
        return stale

    def poll(self) -> int:
        """Apply whatever state records have arrived, without waiting."""
        try:
            return self.reader.poll()
        except StateTopicChangedError as exc:
            self._reload(exc)
            return 0

    def _reload(self, why: StateTopicChangedError) -> None:
        """A state topic changed under the guard: read the state again from the beginning (the
        disk store rebuilds: its identity or offsets no longer fit), not ready meanwhile."""
        log.warning("%s: reading the state again from the beginning before deciding more", why)
        self.on_reload(False)
        try:
            self.close()
            self.load(*self._load_args)
        finally:
            self.on_reload(True)

    def update_gauges(self) -> None:
        """Table sizes, store metrics and newly seen invalid state records."""
        settings, metrics = self.settings, self.metrics
        metrics.state_entries.labels("consent").set(len(self.consent))
        metrics.state_entries.labels("signup_status").set(len(self.signup_status))
        if self.track_forwards:
            metrics.state_entries.labels("forwarded").set(len(self.tables.forwarded))
        report_store_metrics(self.tables, metrics, time.time())
        tables: list[tuple[str, ConsentTable | SignupStatusTable | ForwardedTable]] = [
            (settings.consent_topic, self.consent),
            (settings.signup_status_topic, self.signup_status),
        ]
        if self.track_forwards:
            tables.append((settings.forwarded_topic, self.tables.forwarded))
        for topic, table in tables:
            counted = metrics.state_invalid.labels(topic)
            counted.inc(table.invalid_records - self._invalid_reported.get(topic, 0))
            self._invalid_reported[topic] = table.invalid_records

    def close(self) -> None:
        """Close the reader and the tables' stores."""
        if self._reader is not None:
            self._reader.close()
        self.tables.close()


class RecordDecider:
    """Decode, decide and render the outputs of one input record, for every partner."""

    def __init__(
        self,
        settings: Settings,
        ruleset: Ruleset,
        payload: PayloadProtector,
        state: GuardState,
        beat: Callable[[], None] | None = None,
    ):
        """`beat`: the engine's heartbeat, beaten after every Schema Registry lookup."""
        self.settings = settings
        self.ruleset = ruleset
        self.payload = payload
        self.state = state
        self._avro: AvroDecoder | None = avro_decoder(settings, beat)
        self._receivable = receivable_types(ruleset)
        self._undeclared_labels: set[str] = set()
        self.topic_by_partner = {rule.partner: rule.topic for rule in ruleset.rules}
        self._gated = self._gated_decisions()
        self._gated_blocks = (
            tuple((w.decision.partner, w.reasons) for w in self._gated.withheld) if self._gated else ()
        )
        self._parts = DecisionsParts()
        self._by_reference = settings.blocked_original == "reference"
        self._tracker: ForwardTracker | None = None

    def track(self, tracker: ForwardTracker) -> None:
        """Remember forwards from now on (opt-out notices): marker writes join the outputs."""
        self._tracker = tracker

    def _gated_decisions(self) -> DecisionsPart | None:
        """What `decide` answers for an envelope (an event type no rule can receive): the same
        for every such input, whatever its id, so its part of the blocked record is built once."""
        probe = Envelope.model_construct(event_id="-", event_type="")  # "" is no rule's event type
        if not self.ruleset.rules or probe.event_type in self._receivable:
            return None
        return DecisionsPart.of([Withheld.of(d) for d in decide(probe, NO_STATE[False], self.ruleset)])

    def registry_open(self) -> float:
        """1.0 while the Schema Registry circuit is open, else 0.0 (a gauge's callback)."""
        return 1.0 if self._avro is not None and self._avro.registry_open else 0.0

    def start_batch(self) -> None:
        """Called before each batch: the Schema Registry budget is per batch."""
        if self._avro is not None:
            self._avro.start_batch()

    def decode(self, raw: bytes | None, input_format: str) -> Event | Envelope | Malformed:
        """The event in a raw input value (only its envelope when no rule can receive it), or why not."""
        return decode_input(raw, input_format, self._avro, self._receivable)

    def emit(
        self, value: bytes | None, source: SourceRef, stale: bool, tally: BatchTally, sink: Sink
    ) -> None:
        """Decide one input; send its forwarded records and at most one blocked record to `sink`.

        Every output is built before any is sent, so an exception while building them
        (decoding, deciding, projecting, serializing) ends as an `internal_error` block for
        every partner of this input, never as a crash of the engine or a partial set of outputs.
        """
        raw = value or b""
        outputs = _Outputs()
        record: Event | Envelope | Malformed | None = None
        content: tuple[bytes | None, bytes, Headers] | None = None
        try:
            record = self.decode(value, source.input_format)
            content = self._content_record(record, raw, source) if type(record) is Envelope else None
            if content is None:
                self._build_outputs(record, raw, source, stale, outputs)
        except Exception as exc:
            log.warning(
                "internal error building the outputs of %s[%d]@%d: %s; blocked for every partner",
                source.topic,
                source.partition,
                source.offset,
                type(exc).__name__,
            )
            event_id = record.event_id if isinstance(record, _DECODED) else None
            outputs = self._contained_outputs(raw, source, event_id, exc)
            content = None
        if content is not None:  # the fused path: one blocked record, the shared decisions' counts
            blocked_key, blocked_value, blocked_headers = content
            sink(self.settings.blocked_topic, blocked_value, blocked_key, blocked_headers)
            tally.shared[self._gated_blocks] += 1
            tally.records_in[source.topic] += 1
            if source.timestamp_ms is not None:
                tally.timestamps_ms.append(source.timestamp_ms)
            return
        for topic, output, key, headers in outputs.records:
            sink(topic, output, key, headers)
        if outputs.markers and self._tracker is not None:
            self._tracker.stage(outputs.markers)
        tally.add(outputs)
        if isinstance(record, Event):
            for path in record.undeclared_fields:
                tally.undeclared[self._undeclared_label(path)] += 1
        tally.records_in[source.topic] += 1
        if source.timestamp_ms is not None:
            tally.timestamps_ms.append(source.timestamp_ms)

    def _content_record(
        self, record: Envelope, raw: bytes, source: SourceRef
    ) -> tuple[bytes | None, bytes, Headers] | None:
        """The fused path of an input no rule can receive (most traffic), full payload mode: its
        blocked record (key, value, headers) in one step from the shared decisions, the same
        bytes as the general path. None when the general path must build it."""
        gated = self._gated
        if gated is None or record.event_type in self._receivable:
            return None
        return content_blocked_record(
            raw,
            source,
            record.event_id,
            self.payload,
            self._by_reference,
            gated,
            self.settings.max_record_bytes,
        )

    def _build_outputs(
        self,
        record: Event | Envelope | Malformed,
        raw: bytes,
        source: SourceRef,
        stale: bool,
        outputs: _Outputs,
    ) -> None:
        settings = self.settings
        gated = self._gated
        if gated is not None and isinstance(record, Envelope) and record.event_type not in self._receivable:
            self._add_blocked(record, raw, source, None, gated.withheld, outputs, gated)
            return
        snapshot = (
            snapshot_for(record, self.state.consent, self.state.signup_status, stale)
            if isinstance(record, Event) and consults_state(record, self.ruleset)
            else None
        )
        for decision in decide(record, snapshot or NO_STATE[stale], self.ruleset):
            if not decision.forwarded:
                outputs.withheld.append(Withheld.of(decision))
                continue
            key, value = partner_record(decision)
            if len(value) + len(key or b"") > settings.max_record_bytes:
                outputs.withheld.append(Withheld.of(decision, (Reason.RECORD_TOO_LARGE.value,)))
                continue
            topic = self.topic_by_partner[decision.partner]
            outputs.records.append(
                (topic, value, key, partner_headers(decision, source))
            )  # size checked above
            outputs.forwarded.append(decision)
            if self._tracker is not None and isinstance(record, Event):
                self._add_markers(self._tracker, record, decision, outputs)
        if outputs.withheld:
            self._add_blocked(record, raw, source, snapshot, outputs.withheld, outputs)

    @staticmethod
    def _add_markers(tracker: ForwardTracker, event: Event, decision: Decision, outputs: _Outputs) -> None:
        """The forwarded markers this forward changes, produced with it (and staged once sent)."""
        writes = tracker.markers(event, decision)
        if writes:
            outputs.markers = [*(outputs.markers or ()), *writes]
            for key, value in writes:
                outputs.records.append((tracker.topic, value, key, None))

    def _add_blocked(
        self,
        record: Event | Envelope | Malformed,
        raw: bytes,
        source: SourceRef,
        snapshot: StateSnapshot | None,
        withheld: list[Withheld],
        outputs: _Outputs,
        decisions: DecisionsPart | None = None,
    ) -> None:
        """The input's one blocked record, listing `withheld` (serialized as `decisions` when given)."""
        settings = self.settings
        if decisions is not None:
            outputs.withheld = decisions.withheld  # shared by every gated input; never changed
            outputs.shared_blocks = self._gated_blocks
        by_reference = self._by_reference and isinstance(record, Envelope)
        event_id = record.event_id if isinstance(record, _DECODED) else None
        shared = blocked_input(source, raw, snapshot, event_id, self.payload, by_reference)
        blocked_key, value, headers = blocked_record(
            withheld, shared, source, settings.max_record_bytes, decisions or self._parts.of(withheld)
        )
        outputs.add(settings.blocked_topic, value, blocked_key, headers, settings.max_record_bytes)

    def _contained_outputs(
        self, raw: bytes, source: SourceRef, event_id: str | None, exc: Exception
    ) -> _Outputs:
        """One blocked record, `internal_error` for every partner, built from nothing but the raw bytes."""
        settings = self.settings
        try:
            shared = blocked_input(source, raw, None, event_id, self.payload)
        except Exception:  # e.g. redaction of an input that cannot be re-read: keep only its hash
            where = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
            payload = {"payload_mode": self.payload.mode, "original_b64": None}
            shared = BlockedInput(
                kafka_key=None,
                event_id=None,
                snapshot_json=b"null",
                source_json=orjson.dumps({**where, "format": source.input_format}),
                payload=payload,
                payload_json=orjson.dumps(payload)[1:-1],
                original_size=len(raw),
                original_sha256=hashlib.sha256(raw).hexdigest(),
            )
        outputs = _Outputs()
        for rule in self.ruleset.rules:
            decision = Decision(
                partner=rule.partner,
                rule_id=rule.rule_id,
                ruleset_digest=self.ruleset.digest,
                event_id=event_id,
                verdict="block",
                reasons=(Reason.INTERNAL_ERROR.value,),
                details=(f"{CONTAINED_ERROR_DETAIL}{type(exc).__name__}",),
            )
            outputs.withheld.append(Withheld.of(decision))
        blocked_key, value, headers = blocked_record(
            outputs.withheld, shared, source, settings.max_record_bytes
        )
        outputs.records.append((settings.blocked_topic, value, blocked_key, headers))
        return outputs

    def _undeclared_label(self, path: str) -> str:
        """The metric label for an undeclared field path, bounded in number (attackers pick keys)."""
        if path in self._undeclared_labels:
            return path
        if len(self._undeclared_labels) >= MAX_UNDECLARED_LABELS:
            return "_other"
        self._undeclared_labels.add(path)
        return path
