"""`replay forwarded`: what each partner actually received, re-checked apart from the decision path.

Every record on a partner topic is checked three ways, none of them by re-running `decide`:

- **leak re-scan**: today's leak scan (the vocabulary of the rules given now) over the record's
  keys and values. A vocabulary change can make yesterday's output a finding.
- **projection**: the record is what its rule, at the ruleset digest its headers record,
  could have produced: its keys are the fields of one event type of that rule, every
  required field is there, a kept value passes its `values:`/`pattern:`/`max_length:`, and
  each transformed value has its transform's shape (64 hex digits for a pseudonym or a hash,
  an address with its host bits zeroed, a time on its granularity, a UUID ad id).
- **conservation** (where the input is still held): every input on the source topics in
  the range ends, for every partner of the ruleset that decided it, exactly once: forwarded
  (a partner record whose headers name that input) or listed in a blocked record.

Values read from partner topics are hostile input: they are only ever counted, matched and
named by field, never shown.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.audit.rulesets import RulesetLibrary
from streams.audit.source import BlockedFilter, read_to_end, read_topic
from streams.core.identifiers import coarsen_time, truncate_ip
from streams.core.rules.ruleset import CompiledEvent, CompiledField, CompiledRule, Ruleset

Level = Literal["green", "amber", "red"]
Position = tuple[str, int, int]
HEX64 = re.compile(r"[0-9a-f]{64}")
# The transforms whose output is a one-way digest (64 lowercase hex digits).
DIGEST_TRANSFORMS = frozenset({"pseudonym", "sha256_email", "sha256_phone"})
# How each transform is named in the "fields and transforms" table.
TRANSFORM_NAMES: Mapping[str, str] = {
    "keep": "kept",
    "pseudonym": "pseudonym",
    "sha256_email": "hash",
    "sha256_phone": "hash",
    "truncate_ip": "truncated IP",
    "coarsen_time": "coarsened time",
    "ad_id": "ad id",
}
NO_EVENT_TYPE = "—"
# Findings listed per kind in the report and the terminal; --jsonl has them all.
FINDINGS_SHOWN = 25
# Per record: at most this many findings, each at most this long (keys are hostile input).
MAX_FINDINGS = 20
MAX_FINDING_CHARS = 300


@dataclass
class ForwardedRecord:
    """One record read from a partner topic, and what checking it found."""

    partner: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    digest: str | None
    rule_id: str | None
    source: Position | None
    value: Any
    event_type: str = NO_EVENT_TYPE
    fields: dict[str, str] = field(default_factory=dict)  # field -> transform as named above
    leaks: list[str] = field(default_factory=list)
    projection: str | None = None  # why the record is not what its rule could produce
    unverified: str | None = None  # why the projection could not be checked

    @property
    def where(self) -> str:
        """Where the record was read: `topic/partition@offset`."""
        return f"{self.topic}/{self.partition}@{self.offset}"

    def to_json(self) -> dict[str, Any]:
        """One JSON Lines row (field names only, never values)."""
        return {
            "partner": self.partner,
            "where": self.where,
            "timestamp_ms": self.timestamp_ms,
            "ruleset_digest": self.digest,
            "rule_id": self.rule_id,
            "source": list(self.source) if self.source else None,
            "event_type": self.event_type,
            "fields": self.fields,
            "leaks": self.leaks,
            "projection": self.projection,
            "unverified": self.unverified,
        }


RawHeaders = Iterable[tuple[str, str | bytes | None]] | None


def _header(headers: RawHeaders, name: str) -> str | None:
    for key, value in headers or ():
        if isinstance(value, str):
            value = value.encode()
        if key == name and value is not None:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def _source_of(headers: RawHeaders) -> Position | None:
    topic = _header(headers, "pg-source-topic")
    partition, offset = _header(headers, "pg-source-partition"), _header(headers, "pg-source-offset")
    if topic is None or partition is None or offset is None:
        return None
    if not (partition.isdigit() and offset.isdigit()) or len(partition) > 10 or len(offset) > 19:
        return None
    return topic, int(partition), int(offset)


def parse_record(
    partner: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    value: bytes | None,
    headers: RawHeaders,
) -> ForwardedRecord:
    """A partner record as read (its value parsed, its headers read); never raises."""
    headers = list(headers or ())
    try:
        parsed: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        parsed = None
    return ForwardedRecord(
        partner,
        topic,
        partition,
        offset,
        timestamp_ms,
        _header(headers, "pg-ruleset-digest"),
        _header(headers, "pg-rule-id"),
        _source_of(headers),
        parsed,
    )


# ---- the checks (pure) ------------------------------------------------------------------------


def rescan(record: ForwardedRecord, today: Ruleset) -> list[str]:
    """Today's leak scan of the record: its keys and its values (findings as `path: kind`)."""
    value = record.value
    if not isinstance(value, dict):
        return ["record: not_a_json_object"]
    scanner = today.leak_scanner
    findings = [f"{key}: key_{found}" for key in value if (found := scanner.key_finding(str(key)))]
    return findings + scanner.scan(value)


def _shape_problem(fld: CompiledField, value: Any) -> str | None:
    """Why `value` cannot be what `fld`'s transform produces, or None."""
    transform = fld.spec.transform
    if transform == "keep":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return "not a kept scalar"
        return fld.refuse_kept(str(value)) if isinstance(value, str) else None
    if not isinstance(value, str):
        return f"not a {transform} value"
    if transform in DIGEST_TRANSFORMS:
        return None if HEX64.fullmatch(value) else f"not a {transform} digest"
    if transform == "truncate_ip":
        return None if truncate_ip(value) == value else "an address with host bits kept"
    if transform == "coarsen_time":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return "not a time"
        granularity = fld.spec.granularity
        return None if coarsen_time(moment, granularity) == value else f"not on its {granularity}"
    if transform == "ad_id":
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            return "not a UUID"
        return "a zeroed ad id" if parsed.int == 0 else None
    return f"unknown transform {transform}"


def _candidates(rule: CompiledRule, value: dict[str, Any]) -> list[tuple[str, CompiledEvent]]:
    """The rule's event types this record could be: its own event_type when it carries one
    the rule lists, else every event type whose fields cover the record's keys."""
    named = value.get("event_type")
    if isinstance(named, str) and named in rule.events:
        return [(named, rule.events[named])]
    keys = set(value)
    return [(t, e) for t, e in rule.events.items() if keys <= {f.name for f in e.fields}]


def check_projection(record: ForwardedRecord, ruleset: Ruleset) -> str | None:
    """Why the record is not a projection its rule in `ruleset` could produce; None when it is.

    Sets the record's event type and its fields with their transforms as a side effect.
    """
    value = record.value
    if not isinstance(value, dict):
        return "not a JSON object"
    if record.partner not in ruleset.partners:
        return f"the ruleset at its digest has no rule for partner {record.partner}"
    rule = ruleset.rule(record.partner)
    if record.rule_id != rule.rule_id:
        return f"header rule id {record.rule_id!r} is not the rule's {rule.rule_id!r}"
    if record.topic != rule.topic:
        return f"written to {record.topic}, the rule's topic is {rule.topic}"
    problems: list[str] = []
    for event_type, event in _candidates(rule, value):
        by_name = {f.name: f for f in event.fields}
        extra = sorted(set(value) - set(by_name))
        missing = sorted(f.name for f in event.fields if f.spec.required and f.name not in value)
        shapes = [
            f"{name}: {why}"
            for name, v in value.items()
            if name in by_name and (why := _shape_problem(by_name[name], v))
        ]
        if not (extra or missing or shapes):
            record.event_type = event_type
            record.fields = {name: TRANSFORM_NAMES.get(by_name[name].spec.transform, "?") for name in value}
            return None
        problems.append(
            f"{event_type}: "
            + "; ".join(
                [
                    *(f"field {n} not in the rule" for n in extra),
                    *(f"required {n} missing" for n in missing),
                    *shapes,
                ]
            )
        )
    record.fields = {str(name): "?" for name in value}
    if isinstance(value.get("event_type"), str):
        record.event_type = str(value["event_type"])[:60]
    return " | ".join(problems) if problems else "its fields match no event type of the rule"


def check_record(record: ForwardedRecord, today: Ruleset, library: RulesetLibrary) -> ForwardedRecord:
    """Run the leak re-scan and the projection check on one record (in place); never raises."""
    try:
        found = rescan(record, today)
        record.leaks = [_bounded(f) for f in found[:MAX_FINDINGS]]
        if len(found) > MAX_FINDINGS:
            record.leaks.append(f"and {len(found) - MAX_FINDINGS:,} more findings")
    except Exception as exc:  # a hostile record must never stop the audit (RecursionError too)
        record.leaks = [f"record: could not be scanned ({type(exc).__name__})"]
    if record.digest is None or record.rule_id is None:
        record.unverified = "no pg-ruleset-digest/pg-rule-id headers (written before they were added?)"
        if isinstance(record.value, dict):
            record.fields = {str(name): "?" for name in record.value}
            if isinstance(record.value.get("event_type"), str):
                record.event_type = str(record.value["event_type"])[:60]
        return record
    ruleset = library.find(record.digest)
    if ruleset is None:
        record.unverified = f"ruleset {record.digest[:80]} not found ({library.searched()})"
        return record
    try:
        projection = check_projection(record, ruleset)
    except Exception as exc:
        projection = f"could not be checked ({type(exc).__name__})"
    record.projection = None if projection is None else _bounded(projection, MAX_FINDING_CHARS * 2)
    return record


def _bounded(text: str, limit: int = MAX_FINDING_CHARS) -> str:
    """Hostile keys appear in findings: at most `limit` characters of them."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- conservation (pure) ----------------------------------------------------------------------


@dataclass
class Conservation:
    """Every input in the range, for every partner, exactly once: forwarded or blocked."""

    inputs: int = 0  # inputs read from the source topics in the range
    checked_pairs: int = 0  # (input, partner) pairs checked
    missing: list[tuple[Position, str]] = field(default_factory=list)  # no output at all
    duplicated: list[tuple[Position, str, int]] = field(default_factory=list)  # more than one
    undecided: int = 0  # inputs with no output for any partner (not decided yet, or lost)
    orphans: list[tuple[str, Position]] = field(default_factory=list)  # outputs naming no input held
    not_held: int = 0  # outputs whose input is below its partition's log start
    unplaced: int = 0  # outputs that name no input (no pg-source-* headers)
    ran: bool = True
    why_not: str = ""

    @property
    def level(self) -> Level:
        """Red for a duplicated or orphan output, and for a missing one unless some output names
        no input (it may be that one: not verifiable, amber); amber when not run or inputs undecided.

        An output without headers can never make an incomplete range green.
        """
        if self.duplicated or self.orphans or (self.missing and not self.unplaced):
            return "red"
        if self.missing or self.unplaced or not self.ran or self.undecided or self.not_held:
            return "amber"
        if self.inputs == 0:
            return "amber"  # nothing in the range: nothing was shown to be conserved
        return "green"


def conserve(
    inputs: Mapping[Position, int | None],
    held: Mapping[tuple[str, int], tuple[int, int]],
    forwarded: Iterable[tuple[str, Position | None]],
    blocked: Iterable[tuple[str, Position | None, str | None]],
    partners_of: Callable[[str | None], Iterable[str]],
    audited: Iterable[str],
    outside_range: Collection[Position] = frozenset(),
) -> Conservation:
    """Match outputs to inputs.

    `inputs`: every input position in the range (its timestamp); `held`: each source
    partition's (log start, end); `forwarded`: (partner, source) of each partner record;
    `blocked`: (partner, source, digest) of each blocked view; `partners_of(digest)`: the
    partners of the ruleset that decided an input; `audited`: the partners checked;
    `outside_range`: input positions held but outside the range (their outputs are skipped).
    """
    audited_set = set(audited)
    counts: Counter[tuple[Position, str]] = Counter()
    digests: dict[Position, str] = {}
    result = Conservation(inputs=len(inputs))
    unplaced = 0
    outputs = [(p, s, None) for p, s in forwarded] + list(blocked)
    for partner, source, digest in outputs:
        if partner not in audited_set:
            continue
        if source is None:
            unplaced += 1
            continue
        if source not in inputs:
            bounds = held.get((source[0], source[1]))
            if source in outside_range:
                continue
            if bounds is not None and 0 <= source[2] < bounds[0]:
                result.not_held += 1
            else:
                result.orphans.append((partner, source))
            continue
        counts[(source, partner)] += 1
        if digest is not None:
            digests.setdefault(source, digest)
    result.unplaced = unplaced
    decided = {position for position, _ in counts}
    for position in sorted(inputs):
        if position not in decided:
            result.undecided += 1
            continue
        for partner in sorted(audited_set.intersection(partners_of(digests.get(position)))):
            result.checked_pairs += 1
            seen = counts[(position, partner)]
            if seen == 0:
                result.missing.append((position, partner))
            elif seen > 1:
                result.duplicated.append((position, partner, seen))
    return result


# ---- per partner (pure) -----------------------------------------------------------------------


@dataclass
class PartnerReceived:
    """What one partner received, and what checking it found."""

    partner: str
    topic: str
    records: int = 0
    by_event_type: Counter[str] = field(default_factory=Counter)
    fields: dict[str, Counter[tuple[str, str]]] = field(default_factory=lambda: defaultdict(Counter))
    leaks: list[ForwardedRecord] = field(default_factory=list)
    projection: list[ForwardedRecord] = field(default_factory=list)
    unverified: list[ForwardedRecord] = field(default_factory=list)
    topic_missing: bool = False  # the topic does not exist: the partner received nothing

    @property
    def level(self) -> Level:
        """Red for a leak or a projection its rule could not produce; amber for unverified records."""
        if self.leaks or self.projection:
            return "red"
        return "amber" if self.unverified else "green"


@dataclass
class ForwardedAudit:
    """The whole answer to "what did each partner receive, and should it have?"."""

    partners: list[PartnerReceived]
    conservation: Conservation
    scanned_with: str  # today's ruleset digest (the leak re-scan's vocabulary)
    range_text: str
    records: list[ForwardedRecord] = field(default_factory=list)

    @property
    def level(self) -> Level:
        """The worst of every partner's level and the conservation result."""
        levels = [p.level for p in self.partners] + [self.conservation.level]
        return "red" if "red" in levels else "amber" if "amber" in levels else "green"

    @property
    def total(self) -> int:
        """Partner records read."""
        return sum(p.records for p in self.partners)

    def verdict(self) -> str:
        """One line, in the words of the report's verdict."""
        leaks = sum(len(p.leaks) for p in self.partners)
        wrong = sum(len(p.projection) for p in self.partners)
        unverified = sum(len(p.unverified) for p in self.partners)
        c = self.conservation
        broken = len(c.duplicated) + len(c.orphans) + (0 if c.unplaced else len(c.missing))
        head = f"{self.total:,} partner records read. "
        if self.level == "red":
            parts = []
            if leaks:
                parts.append(f"{leaks:,} record(s) carry a value today's leak scan flags")
            if wrong:
                parts.append(f"{wrong:,} record(s) do not match their rule at the recorded digest")
            if broken:
                parts.append(f"{broken:,} input/partner pair(s) not accounted for exactly once")
            return head + "; ".join(parts) + "."
        notes = []
        if unverified:
            notes.append(f"{unverified:,} record(s) whose projection could not be checked")
        if not c.ran:
            notes.append(f"conservation not checked ({c.why_not})")
        if c.undecided:
            notes.append(f"{c.undecided:,} input(s) with no output yet")
        if c.not_held:
            notes.append(f"{c.not_held:,} output(s) whose input is past retention")
        if c.ran and c.inputs == 0:
            notes.append("no input held in the range, so conservation showed nothing")
        if c.unplaced:
            notes.append(f"{c.unplaced:,} output(s) name no input (no pg-source-* headers)")
        if c.missing:
            notes.append(f"{len(c.missing):,} input/partner pair(s) with no output found (maybe those)")
        if notes:
            return head + "No leak, no projection mismatch, but: " + "; ".join(notes) + "."
        return (
            head + "No record carries a value today's leak scan flags; every record matches its rule "
            f"at its recorded digest; every one of {c.inputs:,} inputs is forwarded or blocked exactly "
            "once for every partner checked."
        )


def summarize(
    records: Iterable[ForwardedRecord],
    topics: Mapping[str, str],
    conservation: Conservation,
    today: Ruleset,
    range_text: str,
) -> ForwardedAudit:
    """Group checked records per partner."""
    partners = {p: PartnerReceived(p, t) for p, t in topics.items()}
    kept = []
    for record in records:
        kept.append(record)
        summary = partners[record.partner]
        summary.records += 1
        summary.by_event_type[record.event_type] += 1
        for name, transform in record.fields.items():
            summary.fields[record.event_type][(name, transform)] += 1
        if record.leaks:
            summary.leaks.append(record)
        if record.projection:
            summary.projection.append(record)
        if record.unverified:
            summary.unverified.append(record)
    return ForwardedAudit(list(partners.values()), conservation, today.digest, range_text, kept)


# ---- reading (Kafka) --------------------------------------------------------------------------


def _consumer(kafka: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            **kafka,
            "group.id": f"partner-guard-forwarded-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )


def topic_partitions(consumer: Consumer, topic: str) -> list[TopicPartition] | None:
    metadata = consumer.list_topics(topic, timeout=10)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return None
    return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in described.partitions]


def in_range(stamp: int | None, since_ms: int | None, until_ms: int | None) -> bool:
    if since_ms is not None and (stamp is None or stamp < since_ms):
        return False
    return not (until_ms is not None and (stamp is None or stamp >= until_ms))


def read_partner_topics(
    kafka: dict[str, Any],
    topics: Mapping[str, str],
    since_ms: int | None,
    until_ms: int | None,
    missing: set[str] | None = None,
) -> Iterator[ForwardedRecord]:
    """Every record on the partner topics (partner -> topic) in the time range, read_committed;
    topics that do not exist are added to `missing`."""
    consumer = _consumer(kafka)
    try:
        partner_of = {topic: partner for partner, topic in topics.items()}
        partitions = []
        for topic in partner_of:
            found = topic_partitions(consumer, topic)
            if found is None:  # the partner received nothing (said so in the result)
                if missing is not None:
                    missing.add(topic)
                continue
            partitions += found
        for message in read_to_end(consumer, partitions) if partitions else ():
            kind, stamp = message.timestamp()
            when = stamp if kind else None
            if not in_range(when, since_ms, until_ms):
                continue
            at, partition, offset = message.topic(), message.partition(), message.offset()
            if at is None or partition is None or offset is None:
                continue
            headers = message.headers()
            listed = headers if isinstance(headers, list) else []
            yield parse_record(partner_of[at], at, partition, offset, when, message.value(), listed)
    finally:
        consumer.close()


def read_inputs(
    kafka: dict[str, Any],
    topics: Iterable[str],
    since_ms: int | None,
    until_ms: int | None,
    sample_every: int = 1,
) -> tuple[dict[Position, int | None], dict[tuple[str, int], tuple[int, int]], set[Position]]:
    """Every input position still held in the range (with its timestamp), each source
    partition's (log start, end), and the positions held outside the range. With
    `sample_every` N > 1 only inputs whose offset is a multiple of N are in the range (the
    others count as outside it: a deterministic sample, the same on every run)."""
    consumer = _consumer(kafka)
    inputs: dict[Position, int | None] = {}
    held: dict[tuple[str, int], tuple[int, int]] = {}
    outside: set[Position] = set()
    try:
        partitions = []
        for topic in topics:
            found = topic_partitions(consumer, topic)
            if found is None:
                raise RuntimeError(f"source topic '{topic}' not found")
            for tp in found:
                held[(topic, tp.partition)] = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=10
                )
            partitions += found
        for message in read_to_end(consumer, partitions) if partitions else ():
            kind, stamp = message.timestamp()
            when = stamp if kind else None
            at, partition, offset = message.topic(), message.partition(), message.offset()
            if at is None or partition is None or offset is None:
                continue
            if in_range(when, since_ms, until_ms) and offset % sample_every == 0:
                inputs[(at, partition, offset)] = when
            else:
                outside.add((at, partition, offset))
    finally:
        consumer.close()
    return inputs, held, outside


def blocked_outputs(
    kafka: dict[str, Any], blocked_topic: str
) -> list[tuple[str, Position | None, str | None]]:
    """(partner, source position, ruleset digest) of every blocked view on the blocked topic."""
    out: list[tuple[str, Position | None, str | None]] = []
    for view in read_topic(kafka, blocked_topic, BlockedFilter()):
        partner, source, digest = view.get("partner"), view.get("source"), view.get("ruleset_digest")
        if not isinstance(partner, str):
            continue
        position = None
        if isinstance(source, dict):
            topic, partition, offset = source.get("topic"), source.get("partition"), source.get("offset")
            if isinstance(topic, str) and type(partition) is int and type(offset) is int:
                position = (topic, partition, offset)
        out.append((partner, position, digest if isinstance(digest, str) else None))
    return out


def _checked(record: ForwardedRecord, today: Ruleset, library: RulesetLibrary) -> ForwardedRecord:
    """The record checked, its value dropped (millions of records: only what was found is kept)."""
    check_record(record, today, library)
    record.value = None
    return record


def audit_forwarded(
    kafka: dict[str, Any],
    today: Ruleset,
    library: RulesetLibrary,
    partner: str | None,
    input_topics: list[str] | None,
    blocked_topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    range_text: str = "every record held",
    sample_every: int = 1,
) -> ForwardedAudit:
    """Read and check the partner topics (all, or one partner), and cross-check the inputs.

    `input_topics` None: the cross-check is not run (said so in the result).
    """
    topics = {r.partner: r.topic for r in today.rules if partner is None or r.partner == partner}
    missing: set[str] = set()
    reader = read_partner_topics(kafka, topics, since_ms, until_ms, missing)
    records = [_checked(r, today, library) for r in reader]
    if input_topics is None:
        conservation = Conservation(ran=False, why_not="--no-inputs given")
    else:
        inputs, held, outside = read_inputs(kafka, input_topics, since_ms, until_ms, sample_every)
        blocked = blocked_outputs(kafka, blocked_topic)

        def partners_of(digest: str | None) -> Iterable[str]:
            ruleset = library.find(digest) if digest else None
            return (ruleset or today).partners

        forwarded = [(r.partner, r.source, r.digest) for r in records]
        # A record outside the time range may still be the output of an input inside it.
        if since_ms is not None or until_ms is not None:
            every = read_partner_topics(kafka, topics, None, None)
            forwarded = [(r.partner, r.source, r.digest) for r in every]
        conservation = conserve(inputs, held, [], [*forwarded, *blocked], partners_of, topics, outside)
    audit = summarize(records, topics, conservation, today, range_text)
    for summary in audit.partners:
        summary.topic_missing = summary.topic in missing
    return audit
