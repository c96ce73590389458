"""Blocked records assembled from parts serialized once are the documented document, byte for byte.

The hot path builds a blocked record's value by joining pre-serialized parts (the decisions of
every input no rule can receive are serialized once per ruleset). Replay and every consumer of
`guard.blocked` read the document; these tests pin that the bytes are exactly what serializing
that document gives, and that a gated input's record is the one `decide` gives it.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.core.codec import decode_json_gated
from streams.core.decide import decide, receivable_types
from streams.core.models import ConsentRecord, Decision, Envelope, SignupStatus, StateSnapshot
from streams.core.rules.ruleset import Ruleset
from streams.gen.traffic import TrafficGenerator
from streams.runtime.config import Settings
from streams.runtime.formats.payload import Keyring, PayloadProtector
from streams.runtime.formats.records import (
    BLOCKED_FORMAT,
    MAX_REMEMBERED_PART_BYTES,
    DecisionsPart,
    DecisionsParts,
    SourceRef,
    Withheld,
    blocked_input,
    blocked_record,
    content_blocked_record,
)
from streams.runtime.kafka.io import Headers
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.pipeline.decider import BatchTally, GuardState, RecordDecider
from tests.hostile import hostile_case

KEYRING = Keyring({"k1": b"\x02" * 32}, "k1")
SNAPSHOT = StateSnapshot(
    consent=(ConsentRecord(subject="account:a-1", interest_based_ads="denied", updated_at=1),),
    signup_status=SignupStatus(account_id="a-1", status="member"),
)
Output = tuple[str, bytes, bytes | None, Headers | None]


def _document(withheld: list[Withheld], value_of: dict[str, Any]) -> bytes:
    """The documented v2 blocked record, serialized as a whole (the oracle)."""
    return orjson.dumps(
        {
            "format": BLOCKED_FORMAT,
            "event_id": value_of["event_id"],
            "ruleset_digest": withheld[0].decision.ruleset_digest,
            "decisions": [
                {
                    "partner": w.decision.partner,
                    "rule_id": w.decision.rule_id,
                    "reasons": list(w.reasons),
                    "details": list(w.decision.details),
                }
                for w in withheld
            ],
            "snapshot": value_of["snapshot"],
            "source": value_of["source"],
            **{k: value_of[k] for k in value_of["payload_members"]},
            "original_size": value_of["original_size"],
            "original_sha256": value_of["original_sha256"],
            "reduced": False,
        }
    )


def _decision(
    partner: str, event_id: str | None, reasons: tuple[str, ...], details: tuple[str, ...]
) -> Decision:
    return Decision(
        partner, f"{partner}-v1", "sha256:" + "c" * 64, event_id, "block", reasons, details=details
    )


@pytest.mark.parametrize("mode", ["full", "redacted", "encrypted", "reference"])
@pytest.mark.parametrize("event_id", [None, "ev-1", 'q"uote\\ \u00e9\u2028 \U0001f600 \x00'])
@pytest.mark.parametrize("key", [None, b"acct-1", b"\xff" * 2_000])
@pytest.mark.parametrize("snapshot", [None, SNAPSHOT])
def test_the_assembled_value_is_the_serialized_document(
    mode: str, event_id: str | None, key: bytes | None, snapshot: StateSnapshot | None
) -> None:
    protector = PayloadProtector("full" if mode == "reference" else mode, KEYRING)  # type: ignore[arg-type]
    source = SourceRef("internal.\u00e9vents", 2, 41, None if key else 17, key, "json")
    raw = b'{"event_id":"ev-1","x":"\xc3\xa9"}'
    shared = blocked_input(source, raw, snapshot, event_id, protector, by_reference=mode == "reference")
    withheld = [
        Withheld.of(_decision("p", event_id, ("consent_gpc", "minor"), ("d\u00e9tail", '"'))),
        Withheld.of(_decision("q", event_id, ("minor",), ()), ("record_too_large",)),
    ]
    key_out, value, headers = blocked_record(withheld, shared, source, 900_000)
    parsed = orjson.loads(value)
    assert value == _document(withheld, {**parsed, "payload_members": list(shared.payload)})
    assert key_out == shared.kafka_key
    assert headers == [
        ("pg-partners", b"p,q"),
        ("pg-reasons", b"consent_gpc,minor,record_too_large"),
        ("pg-ruleset-digest", ("sha256:" + "c" * 64).encode()),
        ("pg-source-topic", "internal.\u00e9vents".encode()),
        ("pg-source-partition", b"2"),
        ("pg-source-offset", b"41"),
    ]


def _decider(ruleset: Ruleset, blocked_original: str) -> RecordDecider:
    config = Settings(bootstrap_servers="unused:9092", blocked_original=blocked_original)
    return RecordDecider(config, ruleset, PayloadProtector("full"), GuardState(config, {}, GuardMetrics()))


def _emit(decider: RecordDecider, raw: bytes, offset: int) -> list[Output]:
    sent: list[Output] = []
    source = SourceRef("internal.events", 1, offset, 1_795_000_000_000, b"k", "json")
    decider.emit(raw, source, False, BatchTally(), lambda *record: sent.append(record))
    return sent


def _expected_gated(ruleset: Ruleset, raw: bytes, offset: int, by_reference: bool) -> list[Output]:
    """What the generic path builds for a gated input: `decide`, then one blocked record."""
    record = decode_json_gated(raw, receivable_types(ruleset))
    assert isinstance(record, Envelope)
    source = SourceRef("internal.events", 1, offset, 1_795_000_000_000, b"k", "json")
    withheld = [Withheld.of(d) for d in decide(record, StateSnapshot(), ruleset)]
    shared = blocked_input(source, raw, None, record.event_id, PayloadProtector("full"), by_reference)
    key, value, headers = blocked_record(withheld, shared, source, 900_000)
    return [("guard.blocked", value, key, headers)]


@pytest.mark.parametrize("blocked_original", ["copy", "reference"])
def test_a_gated_input_gets_the_blocked_record_decide_gives_it(
    ruleset: Ruleset, blocked_original: str
) -> None:
    decider = _decider(ruleset, blocked_original)
    generator = TrafficGenerator(seed=5, population=50, malformed_rate=0.0)
    gated = 0
    for offset, event in enumerate(generator.events(400)):
        raw = event.value or b""
        if not isinstance(decode_json_gated(raw, receivable_types(ruleset)), Envelope):
            continue
        gated += 1
        assert _emit(decider, raw, offset) == _expected_gated(
            ruleset, raw, offset, blocked_original == "reference"
        )
    assert gated > 100


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_case())
def test_hostile_gated_inputs_get_the_blocked_record_decide_gives_them(
    ruleset: Ruleset, case: dict[str, Any]
) -> None:
    raw = orjson.dumps(case)
    if isinstance(decode_json_gated(raw, receivable_types(ruleset)), Envelope):
        assert _emit(_decider(ruleset, "copy"), raw, 3) == _expected_gated(ruleset, raw, 3, False)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=140),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F), min_size=120, max_size=135),
        st.integers(-(2**63), 2**63 - 1),
        st.none(),
        st.booleans(),
    ),
    st.one_of(
        st.sampled_from(["search", "", "page_view"]), st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)
    ),
)
def test_the_envelope_check_accepts_exactly_what_envelope_validation_accepts(
    ruleset: Ruleset, event_id: Any, event_type: Any
) -> None:
    raw = orjson.dumps({"event_id": event_id, "event_type": event_type, "event_time": 1})
    decoded = decode_json_gated(raw, receivable_types(ruleset))
    try:
        expected: Envelope | None = Envelope.model_validate({"event_id": event_id, "event_type": event_type})
    except ValidationError:
        expected = None
    if expected is None or event_type in receivable_types(ruleset):
        assert not isinstance(decoded, Envelope)
    else:
        assert isinstance(decoded, Envelope) and decoded == expected
        assert decoded.model_dump() == expected.model_dump()


def test_blocks_of_gated_inputs_reach_the_metrics_per_partner_and_reason(ruleset: Ruleset) -> None:
    decider, tally, metrics = _decider(ruleset, "copy"), BatchTally(), GuardMetrics()
    play = orjson.dumps({"event_id": "e", "event_type": "playback_started", "event_time": 1})
    malformed = b'{"event_id":"e","event_id":"f"}'
    for offset, raw in enumerate([play, play, play, malformed]):
        source = SourceRef("internal.events", 0, offset, None, None, "json")
        decider.emit(raw, source, False, tally, lambda *record: None)
    tally.apply(metrics, 0.01)
    for partner in ruleset.partners:
        assert metrics.decisions.labels(partner, "block")._value.get() == 4
        assert metrics.block_reasons.labels(partner, "event_type_not_allowed")._value.get() == 3
        assert metrics.block_reasons.labels(partner, "malformed")._value.get() == 1


_GRANTS: st.SearchStrategy[Literal["granted", "denied"] | None] = st.sampled_from([None, "granted", "denied"])
_BOOLS = st.sampled_from([None, True, False])
_TIMES = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=30))


@st.composite
def _snapshots(draw: st.DrawFn) -> StateSnapshot:
    """Snapshots with any values their fields' types allow, built unvalidated (as the tables do)."""
    consent = tuple(
        ConsentRecord.model_construct(
            subject=draw(st.text(max_size=40)),
            updated_at=draw(_TIMES),
            interest_based_ads=draw(_GRANTS),
            do_not_sell_or_share=draw(_BOOLS),
            matched_identifier_opt_out=draw(_BOOLS),
            ad_cookies=draw(_GRANTS),
            jurisdiction=draw(st.one_of(st.none(), st.text(max_size=8))),
        )
        for _ in range(draw(st.integers(0, 3)))
    )
    status = draw(
        st.one_of(
            st.none(),
            st.builds(
                SignupStatus.model_construct,
                account_id=st.text(max_size=40),
                status=st.sampled_from(["prospect", "in_signup", "member", "former_member"]),
                updated_at=_TIMES,
            ),
        )
    )
    return StateSnapshot.model_construct(consent=consent, signup_status=status, stale=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(_snapshots())
def test_the_snapshot_member_is_orjson_of_the_snapshots_json_dump(snapshot: StateSnapshot) -> None:
    """Full mode writes the snapshot with pydantic's serializer: the bytes orjson gives its dump."""
    source = SourceRef("internal.events", 0, 1, None, None, "json")
    shared = blocked_input(source, b"{}", snapshot, "e", PayloadProtector("full"))
    assert shared.snapshot_json == orjson.dumps(snapshot.model_dump(mode="json"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=30),
    st.integers(0, 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.binary(max_size=1_100)),
    st.sampled_from(["json", "avro", '\u00e9"\\']),
    st.sampled_from(["full", "redacted", "reference"]),
    st.binary(max_size=300),
)
def test_the_source_and_payload_members_are_orjson_of_their_documents(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    input_format: str,
    mode: str,
    raw: bytes,
) -> None:
    protector = PayloadProtector("full" if mode == "reference" else mode, KEYRING)  # type: ignore[arg-type]
    source = SourceRef(topic, partition, offset, timestamp_ms, key, input_format)
    shared = blocked_input(source, raw, None, None, protector, by_reference=mode == "reference")
    kafka_key, key_members = protector.input_key(key)
    assert shared.kafka_key == kafka_key
    where = {"topic": topic, "partition": partition, "offset": offset, "timestamp_ms": timestamp_ms}
    assert shared.source_json == orjson.dumps({**where, **key_members, "format": input_format})
    assert shared.payload_json == orjson.dumps(shared.payload)[1:-1]
    if mode == "full":
        assert shared.payload == protector.protect(raw, {})


def _part_bytes(part: DecisionsPart) -> tuple[bytes, bytes, bytes, bytes, int]:
    return part.json, part.partners_header, part.reasons_header, part.digest_header, part.headers_size


def test_remembered_parts_are_the_parts_of_the_inputs_own_decisions() -> None:
    parts = DecisionsParts(limit=3)
    first = [Withheld.of(_decision("p", "ev-1", ("minor",), ("d",)))]
    same_but_id = [Withheld.of(_decision("p", "ev-2", ("minor",), ("d",)))]
    other_detail = [Withheld.of(_decision("p", "ev-1", ("minor",), ("e",)))]
    too_large = [Withheld.of(_decision("p", "ev-1", ("minor",), ("d",)), ("record_too_large",))]
    assert parts.of(first) is parts.of(same_but_id)  # the event id is not part of the part
    for withheld in (first, same_but_id, other_detail, too_large):
        assert _part_bytes(parts.of(withheld)) == _part_bytes(DecisionsPart.of(withheld))
    assert parts.of(other_detail) is not parts.of(first)
    for detail in ("f", "g", "h"):  # past the limit the memo starts again: never grows unbounded
        parts.of([Withheld.of(_decision("p", "ev-1", ("minor",), (detail,)))])
    assert len(parts._parts) <= 3


def test_a_large_part_is_built_but_not_remembered() -> None:
    """Details can list every undeclared key of a hostile input: a part past the size bound is
    not kept, so the memo holds at most its entry limit times the bound in bytes."""
    parts = DecisionsParts(limit=3)
    huge = tuple(f"unknown_signal: user.k{i:060d}" for i in range(200))
    withheld = [Withheld.of(_decision("p", "ev-1", ("minor",), huge))]
    part = parts.of(withheld)
    assert len(part.json) > MAX_REMEMBERED_PART_BYTES
    assert _part_bytes(part) == _part_bytes(DecisionsPart.of(withheld))
    assert parts._parts == {}


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=30),
    st.integers(0, 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.binary(max_size=1_100)),
    st.sampled_from(["json", "avro", '\u00e9"\\']),
    st.text(max_size=40),
    st.binary(max_size=3_000),
    st.booleans(),
    st.integers(300, 12_000),
)
def test_the_fused_content_record_is_the_general_paths_record(
    ruleset: Ruleset,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    input_format: str,
    event_id: str,
    raw: bytes,
    by_reference: bool,
    max_bytes: int,
) -> None:
    """The gated input's one-step record: the same key, value and headers as `blocked_input` then
    `blocked_record`, or None exactly where the general path must reduce (or refuse) it."""
    probe = Envelope.model_construct(event_id="-", event_type="")
    part = DecisionsPart.of([Withheld.of(d) for d in decide(probe, StateSnapshot(), ruleset)])
    source = SourceRef(topic, partition, offset, timestamp_ms, key, input_format)
    protector = PayloadProtector("full")
    fused = content_blocked_record(raw, source, event_id, protector, by_reference, part, max_bytes)
    shared = blocked_input(source, raw, None, event_id, protector, by_reference)
    unreduced = blocked_record(part.withheld, shared, source, 10**9, part)
    size = len(unreduced[0] or b"") + len(unreduced[1]) + sum(len(n) + len(h or b"") for n, h in unreduced[2])
    if size > max_bytes:
        assert fused is None
    else:
        assert fused == unreduced == blocked_record(part.withheld, shared, source, max_bytes, part)
    for mode in ("redacted", "encrypted"):  # only full mode is fused: the others go the general way
        keyed = PayloadProtector(mode, KEYRING)
        assert content_blocked_record(raw, source, event_id, keyed, by_reference, part, max_bytes) is None
