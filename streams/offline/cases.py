"""Turning a JSON case — `{"event", "consent", "signup_status", "stale"}` — into decisions.

Shared by `partner-guard decide` and `partner-guard rules test`, so both run exactly the
core that `run` runs.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from streams.core.codec import event_from_object, parse_strict_json
from streams.core.decide import decide
from streams.core.models import (
    ConsentRecord,
    Decision,
    Event,
    Malformed,
    SignupStatus,
    StateSnapshot,
)
from streams.core.rules.ruleset import Ruleset

EMPTY_SNAPSHOT = StateSnapshot()


def _event_of(value: Any) -> Event | Malformed:
    if isinstance(value, str):  # the decide contract: a raw string stands for undecodable bytes
        return Malformed(value.encode("utf-8"), "event given as raw bytes (a string)")
    if isinstance(value, dict):
        return event_from_object(value, _dumps(value))
    return Malformed(_dumps(value), "event is missing or not an object")


def _dumps(value: Any) -> bytes:
    """The value as JSON bytes (the raw record a blocked decision keeps); never raises."""
    try:
        return orjson.dumps(value)
    except TypeError:  # e.g. an integer beyond 64 bits, which orjson cannot write
        return repr(value).encode("utf-8", "replace")


def parse_case(case: Any, raw: bytes) -> tuple[Event | Malformed, StateSnapshot]:
    """The record and snapshot of one case; anything invalid makes the record malformed."""
    if not isinstance(case, dict):
        return Malformed(raw, "case is not a JSON object"), EMPTY_SNAPSHOT
    record = _event_of(case.get("event"))
    try:
        consent_cases = case.get("consent") or ()
        if not isinstance(consent_cases, list | tuple):
            raise TypeError("consent must be a list")
        consent = tuple(ConsentRecord.model_validate(c) for c in consent_cases)
        status_obj = case.get("signup_status")
        status = SignupStatus.model_validate(status_obj) if status_obj is not None else None
        stale = case.get("stale", False)
        if not isinstance(stale, bool):
            raise TypeError("stale must be a boolean")
    except (ValidationError, TypeError):
        return Malformed(raw, "invalid consent, signup_status or stale"), EMPTY_SNAPSHOT
    return record, StateSnapshot(consent=consent, signup_status=status, stale=stale)


def decide_case(case: Any, raw: bytes, ruleset: Ruleset) -> list[Decision]:
    """Decide one case for every partner; a case that cannot be read is malformed, never raised."""
    try:
        record, snapshot = parse_case(case, raw)
    except Exception as exc:
        record, snapshot = Malformed(raw, f"case could not be read: {type(exc).__name__}"), EMPTY_SNAPSHOT
    return decide(record, snapshot, ruleset)


def decide_line(line: bytes, ruleset: Ruleset) -> list[Decision]:
    """Decide one JSON Lines input line; garbage (duplicate keys included) blocks every partner."""
    try:
        case = parse_strict_json(line)
    except ValueError:
        return decide(
            Malformed(line, "line is not valid JSON (or has a duplicate key)"), EMPTY_SNAPSHOT, ruleset
        )
    return decide_case(case, line, ruleset)


def decision_json(decision: Decision, explain: bool = False) -> dict[str, Any]:
    """The `decide` output object (docs/records.md), with audit fields when `explain` is set."""
    out: dict[str, Any] = {
        "event_id": decision.event_id,
        "partner": decision.partner,
        "verdict": decision.verdict,
        "reasons": list(decision.reasons),
        "record": decision.record,
    }
    if explain:
        out |= {
            "rule_id": decision.rule_id,
            "ruleset_digest": decision.ruleset_digest,
            "details": list(decision.details),
            "stripped": list(decision.stripped),
        }
    return out
