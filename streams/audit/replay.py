"""Re-deciding blocked records: verify (P7) and what-if, on the same core as `run`.

Anyone who can write to the blocked topic can write anything there, so every record is
checked against the documented shape first (strict types, known payload mode, a reduced
record that really dropped its original). A record that fails is an `invalid_record`:
counted and listed, never a crash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.audit.rulesets import RulesetLibrary
from streams.audit.source import SOURCE_EXPIRED, SOURCE_INVALID, SOURCE_MISMATCH
from streams.core.codec import decode_avro, decode_json
from streams.core.consent import subjects_of
from streams.core.decide import decide, receivable_types
from streams.core.models import Decision, Envelope, Event, Malformed, StateSnapshot
from streams.core.reasons import Reason
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import event_schema
from streams.runtime.formats.payload import (
    FETCHED_ORIGINAL,
    Keyring,
    PayloadKeyError,
    PayloadTamperedError,
    redacted_identifier,
    reveal,
    unhash_key,
)
from streams.runtime.formats.records import BLOCKED_FORMAT, BLOCKED_FORMAT_V1, CONTAINED_ERROR_DETAIL
from streams.runtime.kafka.avro_input import LOOKUPS_SPENT, REGISTRY_UNAVAILABLE, ReplayAvro, decode_input

log = logging.getLogger(__name__)
Status = Literal["match", "mismatch", "unverifiable", "ruleset_not_found", "invalid_record", "source_expired"]
STATUSES: tuple[Status, ...] = get_args(Status)
SHELL_REASONS = frozenset({Reason.RECORD_TOO_LARGE.value})
# Members a reader adds to say where a record was read (never part of the record itself).
READER_MEMBERS = (
    "_timestamp_ms",
    "_offset",
    "_partition",
    "_line",
    "_invalid",
    SOURCE_EXPIRED,
    SOURCE_MISMATCH,
    SOURCE_INVALID,
    FETCHED_ORIGINAL,
)
_FORMATS = "|".join(f.replace(".", "[.]") for f in (BLOCKED_FORMAT_V1, BLOCKED_FORMAT))
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31: anything later cannot be shown as a date
_STRICT = ConfigDict(strict=True, extra="allow", frozen=True)
REGISTRY_TIME = "blocked while the Schema Registry did not answer the job; it answers now"
UNCONFIGURED_AVRO = (
    "Avro read without the job's schema registry or pinned id: every id as the guard's own schema; "
    "give replay the job's settings (--config or PARTNER_GUARD_*)"
)


class _Source(BaseModel):
    model_config = _STRICT
    topic: str
    partition: int = Field(ge=0, lt=2**31)
    offset: int = Field(ge=0, lt=2**63)
    timestamp_ms: int | None = None
    key_b64: str | None = None
    format: Literal["json", "avro"] = "json"


class _BlockedShape(BaseModel):
    """The documented blocked-record format (a v1 record, or one partner's view of a v2 record),
    checked strictly before anything is re-decided."""

    model_config = _STRICT
    format: str = Field(pattern=f"^({_FORMATS})$")
    partner: str
    rule_id: str
    ruleset_digest: str
    reasons: list[str]
    details: list[str]
    event_id: str | None
    snapshot: dict[str, Any] | None
    source: _Source
    payload_mode: Literal["full", "redacted", "encrypted", "reference"]
    original_b64: str | None
    original_redacted: dict[str, Any] | None = None
    key_id: str | None = None
    nonce_b64: str | None = None
    ciphertext_b64: str | None = None
    original_size: int = Field(ge=0)
    original_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reduced: bool


def shape_problem(blocked: Any) -> str | None:
    """Why a blocked record is not in the documented format; None when it is."""
    if not isinstance(blocked, dict):
        return f"not a JSON object ({type(blocked).__name__})"
    if "_invalid" in blocked:
        return str(blocked["_invalid"])
    try:
        shape = _BlockedShape.model_validate({k: v for k, v in blocked.items() if k not in READER_MEMBERS})
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) or "record" for e in exc.errors()})[:5]
        return "not a blocked record: " + ", ".join(fields)
    if shape.reduced and (
        Reason.RECORD_TOO_LARGE.value not in shape.reasons
        or shape.original_b64 is not None
        or shape.ciphertext_b64 is not None
        or shape.original_redacted is not None
    ):
        return "marked reduced but not reduced"
    return None


def reader_members(blocked: Any) -> dict[str, Any]:
    """Where a record was read, with untrusted values dropped (safe to report)."""
    if not isinstance(blocked, dict):
        return {}
    kept = {k: blocked[k] for k in READER_MEMBERS if k in blocked and k != "_invalid"}
    return {k: v for k, v in kept.items() if isinstance(v, int) and not isinstance(v, bool)}


def safe_timestamp(value: Any) -> int | None:
    """A timestamp that can be shown as a date; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP_MS:
        return value
    return None


@dataclass
class Outcome:
    """What re-deciding one blocked record found."""

    blocked: dict[str, Any]
    status: Status
    why: str = ""
    redecided: Decision | None = None
    whatif: Decision | None = None
    event_type: str | None = None  # of the decoded original (reports group by it); None when not decoded
    # Every partner's decision under the proposed ruleset (new partners included); () when none
    whatif_all: tuple[Decision, ...] = ()

    @property
    def partner(self) -> str:
        """The partner the record was withheld from ("-" for an invalid record)."""
        partner = self.blocked.get("partner")
        return partner if isinstance(partner, str) else "-"

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
            "event_type": self.event_type,
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


def original_record(
    blocked: dict[str, Any],
    keyring: Keyring | None,
    gate: Ruleset | None = None,
    avro: ReplayAvro | None = None,
    in_full: bool = False,
) -> Event | Envelope | Malformed | None:
    """The original input decoded as `run` decoded it; None when not recoverable.

    A v2 record's original goes through the job's own `decode_input`: Avro with `avro`
    (the job's writer-schema lookup, registry or pinned id), read into the event schema of
    `gate` (the ruleset that decided); JSON through the envelope gate of `gate`. Without
    `gate`, or `in_full`, the event is validated in full, as a what-if needs. A v1 record's
    original was always validated in full, and its Avro read under the guard's own schema.
    """
    raw = reveal(blocked, keyring)
    if raw is None:
        return None
    input_format = record_format(blocked)
    if blocked.get("format") == BLOCKED_FORMAT_V1:
        return decode_avro(raw, event_schema()) if input_format == "avro" else decode_json(raw)
    receivable = receivable_types(gate) if gate is not None and not in_full else None
    decoder = None
    if input_format == "avro":
        decoder = (avro or ReplayAvro(None)).decoder(gate.event_schema if gate is not None else None)
    return decode_input(raw, input_format, decoder, receivable)


def recorded_snapshot(
    blocked: dict[str, Any],
    record: Event | Envelope | Malformed | None = None,
    keyring: Keyring | None = None,
) -> StateSnapshot:
    """The state snapshot the decision used (empty when it read none).

    In encrypted mode its subjects and account id are keyed hashes: they are mapped back
    through the decrypted event's own identifiers (an id that maps to none stays hashed).
    """
    snapshot = blocked.get("snapshot")
    if not snapshot:
        return StateSnapshot()
    key = unhash_key(blocked, keyring) if blocked.get("payload_mode") != "full" else None
    if key is not None and isinstance(record, Event) and isinstance(snapshot, dict):
        plain = {redacted_identifier(key, s): s for s in subjects_of(record)}
        consent = [
            {**c, "subject": plain.get(str(c.get("subject")), c.get("subject"))} if isinstance(c, dict) else c
            for c in snapshot.get("consent") or ()
        ]
        status = snapshot.get("signup_status")
        account = record.account_id
        if (
            isinstance(status, dict)
            and account
            and status.get("account_id") == redacted_identifier(key, account)
        ):
            status = {**status, "account_id": account}
        snapshot = {**snapshot, "consent": consent, "signup_status": status}
    return StateSnapshot.model_validate(snapshot)


def _decision_for(decisions: list[Decision], partner: str) -> Decision | None:
    return next((d for d in decisions if d.partner == partner), None)


def verify_one(
    blocked: dict[str, Any],
    library: RulesetLibrary,
    keyring: Keyring | None,
    whatif: Ruleset | None = None,
    avro: ReplayAvro | None = None,
) -> Outcome:
    """Re-decide one blocked record under the ruleset that decided it (and optionally another).

    Never raises: a record that is not a blocked record is `invalid_record`, one that cannot
    be re-decided is reported as a mismatch, and the replay goes on.
    """
    problem = shape_problem(blocked)
    if problem is not None:
        return Outcome(reader_members(blocked), "invalid_record", problem)
    try:
        return _verify_one(blocked, library, keyring, whatif, avro)
    except Exception as exc:
        return Outcome(blocked, "mismatch", f"could not re-decide: {type(exc).__name__}")


def _contained_by_the_job(blocked: dict[str, Any]) -> bool:
    details = blocked.get("details") or []
    return bool(details) and str(details[0]).startswith(CONTAINED_ERROR_DETAIL)


def _verify_one(
    blocked: dict[str, Any],
    library: RulesetLibrary,
    keyring: Keyring | None,
    whatif: Ruleset | None,
    avro: ReplayAvro | None,
) -> Outcome:
    if _contained_by_the_job(blocked):
        return Outcome(blocked, "unverifiable", "blocked by the job after an error outside the decision")
    if blocked.get("reduced"):
        return Outcome(blocked, "unverifiable", "original dropped: record was too large")
    if blocked.get(SOURCE_INVALID):
        return Outcome(blocked, "invalid_record", f"reference to no record: {blocked[SOURCE_INVALID]}")
    if blocked.get(SOURCE_EXPIRED):
        return Outcome(blocked, "source_expired", "the referenced source record is below its log start")
    if blocked.get(SOURCE_MISMATCH):
        return Outcome(blocked, "mismatch", str(blocked[SOURCE_MISMATCH]))
    ruleset = library.find(str(blocked.get("ruleset_digest")))
    try:
        record = original_record(blocked, keyring, ruleset, avro)
        full = (
            record
            if whatif is None or ruleset is None
            else original_record(blocked, keyring, ruleset, avro, in_full=True)
        )
        if record is None or full is None:  # nothing to re-decide, and the snapshot's ids stay hashed
            if blocked.get("payload_mode") == "reference":
                why = "original kept by reference: no source to fetch it from"
            else:
                why = f"payload mode {blocked.get('payload_mode')}: original not kept"
            return Outcome(blocked, "unverifiable", why)
        snapshot = recorded_snapshot(blocked, record, keyring)
    except PayloadTamperedError as exc:
        return Outcome(blocked, "mismatch", str(exc))
    except PayloadKeyError as exc:
        return Outcome(blocked, "unverifiable", str(exc))
    except ValidationError:
        return Outcome(reader_members(blocked), "invalid_record", "snapshot is not a valid state snapshot")
    except ValueError as exc:  # bad base64, a nonce of the wrong size
        return Outcome(reader_members(blocked), "invalid_record", str(exc))
    partner = str(blocked.get("partner"))
    outcome = Outcome(blocked, "match", event_type=getattr(full, "event_type", None))
    if whatif is not None:
        outcome.whatif_all = tuple(decide(full, snapshot, whatif))
        outcome.whatif = _decision_for(list(outcome.whatif_all), partner)
    if ruleset is None:
        outcome.status, outcome.why = (
            "ruleset_not_found",
            f"no ruleset with digest {blocked.get('ruleset_digest')} (looked in {library.searched()}; "
            "point replay at the rules that decided it with --verify-rules DIR or --git-dir REPO)",
        )
        return outcome
    decision = _decision_for(decide(record, snapshot, ruleset), partner)
    outcome.redecided = decision
    recorded_reasons = [r for r in blocked.get("reasons", []) if r not in SHELL_REASONS]
    if decision is None:
        outcome.status, outcome.why = "mismatch", f"the ruleset has no rule for partner {partner}"
    elif decision.verdict != "block":
        outcome.status, outcome.why = "mismatch", "recorded: block; re-decided: forward"
    elif list(decision.reasons) != recorded_reasons:
        outcome.status, outcome.why = (
            "mismatch",
            f"recorded reasons {recorded_reasons}; re-decided reasons {list(decision.reasons)}",
        )
    elif decision.rule_id != blocked.get("rule_id"):
        outcome.status, outcome.why = (
            "mismatch",
            f"recorded rule id {str(blocked.get('rule_id'))[:100]!r}; re-decided {decision.rule_id!r}",
        )
    elif list(decision.details) != list(blocked.get("details", [])):
        outcome.status, outcome.why = (
            "mismatch",
            f"recorded details {str(blocked.get('details'))[:300]}; re-decided {list(decision.details)}",
        )
    if outcome.status == "mismatch" and _blocked_for_registry_time(blocked):
        outcome.status, outcome.why = "unverifiable", f"{outcome.why}: {REGISTRY_TIME}"
    elif outcome.status == "mismatch" and record_format(blocked) == "avro" and not (avro and avro.configured):
        outcome.why += f" ({UNCONFIGURED_AVRO})"
    return outcome


def _blocked_for_registry_time(blocked: dict[str, Any]) -> bool:
    """True when the job blocked an Avro record only because the Schema Registry did not answer
    (or was not asked, its batch's lookups spent): that decision depended on the registry's
    state at the time, which replay cannot reproduce."""
    details = blocked.get("details")
    if record_format(blocked) != "avro" or blocked.get("reasons") != [Reason.SCHEMA_UNKNOWN.value]:
        return False
    if not isinstance(details, list) or len(details) != 1 or not isinstance(details[0], str):
        return False
    return (
        re.fullmatch(
            rf"schema id \d+: ({re.escape(REGISTRY_UNAVAILABLE)}|{re.escape(LOOKUPS_SPENT)})", details[0]
        )
        is not None
    )


def record_format(blocked: dict[str, Any]) -> str:
    """The input format of a blocked record's original (json or avro)."""
    return str((blocked.get("source") or {}).get("format", "json"))


@dataclass
class ReplayResult:
    """All outcomes of a replay."""

    outcomes: list[Outcome] = field(default_factory=list)
    # What-if: partners the proposed ruleset adds, decided on every input (`newpartners.NewPartners`)
    new_partners: Any = None

    def count(self, status: Status) -> int:
        """How many outcomes have this status."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> bool:
        """True when any decision did not reproduce or its ruleset is unknown."""
        return any(o.status in ("mismatch", "ruleset_not_found") for o in self.outcomes)

    @property
    def has_invalid(self) -> bool:
        """True when any record is not a blocked record the guard could have written."""
        return any(o.status == "invalid_record" for o in self.outcomes)


def _verify_contained(
    blocked: Any,
    library: RulesetLibrary,
    keyring: Keyring | None,
    whatif: Ruleset | None,
    avro: ReplayAvro | None,
) -> Outcome:
    try:
        return verify_one(blocked, library, keyring, whatif, avro)
    except Exception as exc:  # a hostile record must never stop the audit
        log.warning("blocked record could not be re-decided: %s", type(exc).__name__)
        return Outcome(
            reader_members(blocked), "invalid_record", f"could not be re-decided ({type(exc).__name__})"
        )


def replay(
    records: Iterable[Any],
    library: RulesetLibrary,
    keyring: Keyring | None,
    whatif: Ruleset | None = None,
    avro: ReplayAvro | None = None,
) -> ReplayResult:
    """Verify every record (and what-if when a second ruleset is given).

    `avro` decodes Avro originals as the job did (`ReplayAvro` of its settings); without
    it every schema id is read as the guard's own schema.
    """
    avro = avro or ReplayAvro(None)
    return ReplayResult([_verify_contained(b, library, keyring, whatif, avro) for b in records])
