"""Re-deciding blocked records: verify (P7) and what-if, on the same core as `run`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import decode_avro, decode_json
from streams.core.decide import decide
from streams.core.models import Decision, Event, Malformed, StateSnapshot
from streams.core.reasons import Reason
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import event_schema
from streams.runtime.payload import Keyring, PayloadKeyError, PayloadTamperedError, reveal
from streams.runtime.records import CONTAINED_ERROR_DETAIL

Status = Literal["match", "mismatch", "unverifiable", "ruleset_not_found"]
SHELL_REASONS = frozenset({Reason.RECORD_TOO_LARGE.value})


@dataclass
class Outcome:
    """What re-deciding one blocked record found."""

    blocked: dict[str, Any]
    status: Status
    why: str = ""
    redecided: Decision | None = None
    whatif: Decision | None = None

    @property
    def partner(self) -> str:
        """The partner the record was withheld from."""
        return str(self.blocked.get("partner"))

    def change(self) -> str:
        """How the what-if decision differs: newly_forwarded, reason_change or unchanged."""
        if self.whatif is None:
            return "unknown"
        if self.whatif.forwarded:
            return "newly_forwarded"
        recorded = [r for r in self.blocked.get("reasons", []) if r not in SHELL_REASONS]
        return "unchanged" if list(self.whatif.reasons) == recorded else "reason_change"

    def to_json(self) -> dict[str, Any]:
        """One JSON Lines row of the report."""
        out: dict[str, Any] = {
            "partner": self.partner,
            "event_id": self.blocked.get("event_id"),
            "rule_id": self.blocked.get("rule_id"),
            "ruleset_digest": self.blocked.get("ruleset_digest"),
            "source": self.blocked.get("source"),
            "timestamp_ms": self.blocked.get("_timestamp_ms"),
            "recorded_reasons": self.blocked.get("reasons"),
            "status": self.status,
            "why": self.why,
        }
        if self.redecided is not None:
            out["redecided"] = {
                "verdict": self.redecided.verdict,
                "reasons": list(self.redecided.reasons),
                "details": list(self.redecided.details),
            }
        if self.whatif is not None:
            out["whatif"] = {
                "change": self.change(),
                "verdict": self.whatif.verdict,
                "reasons": list(self.whatif.reasons),
                "fields": sorted(self.whatif.record) if self.whatif.record else [],
            }
        return out


def original_record(blocked: dict[str, Any], keyring: Keyring | None) -> Event | Malformed | None:
    """The input the decision saw, decoded as `run` decoded it; None when not recoverable."""
    raw = reveal(blocked, keyring)
    if raw is None:
        return None
    source = blocked.get("source") or {}
    if source.get("format") == "avro":
        return decode_avro(raw, event_schema())
    return decode_json(raw)


def recorded_snapshot(blocked: dict[str, Any]) -> StateSnapshot:
    """The state snapshot the decision used (empty when it read none)."""
    snapshot = blocked.get("snapshot")
    return StateSnapshot.model_validate(snapshot) if snapshot else StateSnapshot()


def _decision_for(decisions: list[Decision], partner: str) -> Decision | None:
    return next((d for d in decisions if d.partner == partner), None)


def verify_one(
    blocked: dict[str, Any], library: RulesetLibrary, keyring: Keyring | None, whatif: Ruleset | None = None
) -> Outcome:
    """Re-decide one blocked record under the ruleset that decided it (and optionally another).

    Never raises: a record that cannot be re-decided is reported, and the replay goes on.
    """
    try:
        return _verify_one(blocked, library, keyring, whatif)
    except Exception as exc:
        return Outcome(blocked, "mismatch", f"could not re-decide: {type(exc).__name__}")


def _contained_by_the_job(blocked: dict[str, Any]) -> bool:
    details = blocked.get("details") or []
    return bool(details) and str(details[0]).startswith(CONTAINED_ERROR_DETAIL)


def _verify_one(
    blocked: dict[str, Any], library: RulesetLibrary, keyring: Keyring | None, whatif: Ruleset | None
) -> Outcome:
    if _contained_by_the_job(blocked):
        return Outcome(blocked, "unverifiable", "blocked by the job after an error outside the decision")
    if blocked.get("reduced"):
        return Outcome(blocked, "unverifiable", "original dropped: record was too large")
    try:
        record = original_record(blocked, keyring)
        snapshot = recorded_snapshot(blocked)
    except PayloadTamperedError as exc:
        return Outcome(blocked, "mismatch", str(exc))
    except PayloadKeyError as exc:
        return Outcome(blocked, "unverifiable", str(exc))
    except ValidationError:
        return Outcome(blocked, "mismatch", "recorded snapshot is not a valid state snapshot")
    if record is None:
        return Outcome(
            blocked, "unverifiable", f"payload mode {blocked.get('payload_mode')}: original not kept"
        )
    partner = str(blocked.get("partner"))
    outcome = Outcome(blocked, "match")
    if whatif is not None:
        outcome.whatif = _decision_for(decide(record, snapshot, whatif), partner)
    ruleset = library.find(str(blocked.get("ruleset_digest")))
    if ruleset is None:
        outcome.status, outcome.why = (
            "ruleset_not_found",
            f"no ruleset with digest {blocked.get('ruleset_digest')}",
        )
        return outcome
    decision = _decision_for(decide(record, snapshot, ruleset), partner)
    outcome.redecided = decision
    recorded_reasons = [r for r in blocked.get("reasons", []) if r not in SHELL_REASONS]
    if decision is None:
        outcome.status, outcome.why = "mismatch", f"the ruleset has no rule for partner {partner}"
    elif decision.verdict != "block":
        outcome.status, outcome.why = "mismatch", "re-decided as forward"
    elif list(decision.reasons) != recorded_reasons:
        outcome.status, outcome.why = "mismatch", f"reasons {list(decision.reasons)} != {recorded_reasons}"
    elif list(decision.details) != list(blocked.get("details", [])) or decision.rule_id != blocked.get(
        "rule_id"
    ):
        outcome.status, outcome.why = "mismatch", "details or rule id differ"
    return outcome


@dataclass
class ReplayResult:
    """All outcomes of a replay."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """How many outcomes have this status."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> bool:
        """True when any decision did not reproduce or its ruleset is unknown."""
        return any(o.status in ("mismatch", "ruleset_not_found") for o in self.outcomes)


def replay(
    records: Iterable[dict[str, Any]],
    library: RulesetLibrary,
    keyring: Keyring | None,
    whatif: Ruleset | None = None,
) -> ReplayResult:
    """Verify every record (and what-if when a second ruleset is given)."""
    return ReplayResult([verify_one(b, library, keyring, whatif) for b in records])
