"""What-if for partners the proposed ruleset adds: decide every input, not only blocked ones.

A blocked record lists decisions only for partners that existed. For a partner new in the
proposed ruleset, every input must be decided: those the blocked topic holds (their
originals are kept there), and those it cannot show — an input forwarded to every old
partner leaves no blocked record — read from the source topics over the same range.

The state an input was decided with is recorded only in its blocked record, and only when
some old rule read it. Inputs read from the source topics, and blocked inputs whose record
holds no state (no old rule listed their event type), are decided with the consent and
sign-up state as it is now; the summary says how many were.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import Consumer

from streams.audit.forwarded import Position, in_range, topic_partitions
from streams.audit.replay import Outcome, original_record
from streams.audit.source import read_to_end
from streams.core.decide import decide
from streams.core.models import Decision, Envelope, Event, Malformed, StateSnapshot
from streams.core.rules.ruleset import Ruleset

Origin = Literal["blocked", "blocked_now_state", "source_now_state", "blocked_no_state"]
ORIGIN_TEXT = {
    "blocked": "from blocked records, with the state recorded there",
    "blocked_now_state": "from blocked records that hold no state (no old rule read it), with today's state",
    "blocked_no_state": "from blocked records that hold no state, with no state (today's was not read)",
    "source_now_state": "from the source topics (forwarded to every old partner: no blocked record), "
    "with today's state",
}
# Decides one input with today's state: (record) -> its snapshot.
StateFor = Callable[[Event | Malformed], StateSnapshot]


@dataclass(frozen=True)
class NewPartnerRow:
    """Under the proposed ruleset: one new partner and event type."""

    partner: str
    event_type: str
    would_forward: int
    would_block: int
    fields: tuple[str, ...]
    top_reasons: tuple[tuple[str, int], ...]


@dataclass
class NewPartners:
    """The new partners' decisions on every input in the range, and where each input came from."""

    partners: tuple[str, ...]
    rows: list[NewPartnerRow] = field(default_factory=list)
    origins: Counter[str] = field(default_factory=Counter)
    source_read: bool = False
    why_not_source: str = ""

    @property
    def inputs(self) -> int:
        """Inputs decided."""
        return sum(self.origins.values())

    def notes(self) -> list[str]:
        """What the counts rest on, one sentence each."""
        out = [f"{n:,} input(s) {ORIGIN_TEXT[o]}" for o, n in sorted(self.origins.items())]
        if not self.source_read:
            out.append(
                "the source topics were not read "
                f"({self.why_not_source}): inputs forwarded to every old partner are not counted"
            )
        return out


def added_partners(whatif: Ruleset, recorded: Iterable[Ruleset]) -> tuple[str, ...]:
    """Partners of the proposed ruleset that no recorded ruleset has."""
    old = {p for ruleset in recorded for p in ruleset.partners}
    return tuple(p for p in whatif.partners if p not in old)


def _position(blocked: dict[str, Any]) -> Position | None:
    source = blocked.get("source")
    if not isinstance(source, dict):
        return None
    topic, partition, offset = source.get("topic"), source.get("partition"), source.get("offset")
    if isinstance(topic, str) and type(partition) is int and type(offset) is int:
        return topic, partition, offset
    return None


def _fields(record: dict[str, Any] | None) -> set[str]:
    return set(record or {})


class _Tally:
    def __init__(self, partners: tuple[str, ...]) -> None:
        self.partners = partners
        self.verdicts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.fields: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.reasons: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.origins: Counter[str] = Counter()

    def add(self, decisions: Iterable[Decision], event_type: str | None, origin: Origin) -> None:
        self.origins[origin] += 1
        for decision in decisions:
            if decision.partner not in self.partners:
                continue
            key = (decision.partner, event_type or "—")
            self.verdicts[key][decision.verdict] += 1
            if decision.forwarded:
                self.fields[key] |= _fields(decision.record)
            else:
                self.reasons[key].update(decision.reasons)

    def rows(self) -> list[NewPartnerRow]:
        return [
            NewPartnerRow(
                partner,
                event_type,
                self.verdicts[(partner, event_type)]["forward"],
                self.verdicts[(partner, event_type)]["block"],
                tuple(sorted(self.fields[(partner, event_type)])),
                tuple(self.reasons[(partner, event_type)].most_common(3)),
            )
            for partner, event_type in sorted(self.verdicts)
        ]


def decide_new_partners(
    outcomes: Iterable[Outcome],
    whatif: Ruleset,
    partners: tuple[str, ...],
    redecode: Callable[[dict[str, Any]], Event | Envelope | Malformed | None],
    state_for: StateFor | None,
    source_inputs: Callable[[set[Position]], Iterable[tuple[Position, Event | Envelope | Malformed]]] | None,
    why_not_source: str = "",
) -> NewPartners:
    """Decide every input for the `partners` new in `whatif`.

    Each input once: the blocked views of one input share their decisions. `redecode`
    decodes a blocked record's original in full (for the inputs whose record holds no
    state); `state_for` gives today's state (None: not read); `source_inputs(skip)` yields the
    inputs of the source topics in the range that are not in `skip` (None: not read).
    """
    tally = _Tally(partners)
    seen: set[Position] = set()
    for outcome in outcomes:
        position = _position(outcome.blocked)
        if not outcome.whatif_all or position is None or position in seen:
            continue
        seen.add(position)
        decisions: Iterable[Decision] = outcome.whatif_all
        origin: Origin = "blocked"
        if outcome.blocked.get("snapshot") is None and not outcome.blocked.get("reduced"):
            origin = "blocked_no_state"
            if state_for is not None:
                record = redecode(outcome.blocked)
                if isinstance(record, Event | Malformed):
                    decisions = decide(record, state_for(record), whatif)
                    origin = "blocked_now_state"
        tally.add(decisions, outcome.event_type, origin)
    source_read = source_inputs is not None
    for position, record in source_inputs(seen) if source_inputs is not None else ():
        seen.add(position)
        snapshot = state_for(record) if state_for and not isinstance(record, Envelope) else StateSnapshot()
        tally.add(decide(record, snapshot, whatif), getattr(record, "event_type", None), "source_now_state")
    return NewPartners(partners, tally.rows(), tally.origins, source_read, why_not_source)


def read_source_inputs(
    kafka: dict[str, Any],
    topics: Iterable[str],
    since_ms: int | None,
    until_ms: int | None,
    decode: Callable[[str, bytes | None], Event | Envelope | Malformed],
) -> Callable[[set[Position]], Iterable[tuple[Position, Event | Envelope | Malformed]]]:
    """A reader of the source topics in the range (read_committed), decoding each input in full."""

    def inputs(skip: set[Position]) -> Iterable[tuple[Position, Event | Envelope | Malformed]]:
        consumer = Consumer(
            {
                **kafka,
                "group.id": f"partner-guard-whatif-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        try:
            partitions = []
            for topic in topics:
                found = topic_partitions(consumer, topic)
                if found is None:
                    raise RuntimeError(f"source topic '{topic}' not found")
                partitions += found
            for message in read_to_end(consumer, partitions) if partitions else ():
                kind, stamp = message.timestamp()
                at, partition, offset = message.topic(), message.partition(), message.offset()
                if at is None or partition is None or offset is None:
                    continue
                if (at, partition, offset) in skip or not in_range(
                    stamp if kind else None, since_ms, until_ms
                ):
                    continue
                yield (at, partition, offset), decode(at, message.value())
        finally:
            consumer.close()

    return inputs


def redecoder(keyring: Any, avro: Any) -> Callable[[dict[str, Any]], Event | Envelope | Malformed | None]:
    """Decode a blocked record's original in full (as a what-if needs); None when not kept."""

    def redecode(blocked: dict[str, Any]) -> Event | Envelope | Malformed | None:
        try:
            return original_record(blocked, keyring, None, avro, in_full=True)
        except Exception:  # a hostile record is counted, never raised
            return None

    return redecode
