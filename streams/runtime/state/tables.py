"""Consent and sign-up status tables, packed to stay small at millions of entries.

Each table maps a subject (bytes) to one packed int; a 1M-entry consent table costs well
under 250 bytes an entry (measured by `tests/runtime/state/test_state.py`). `KeyValueStore` is the seam
for a disk-backed store when state outgrows one machine's memory.

Identity. A consent record's Kafka key must be its canonical subject and equal the value's
`subject`: `account:<id>`, `profile:<id>` or `device:<id>`, the id non-empty, without
surrounding whitespace or control characters. A sign-up status record's key must equal
its value's `account_id` (same rules for the id). Anything else is an invalid record: it
is counted, logged (without identifiers), and stored as the most restrictive record under
every subject it names (the key and the value's subject, trimmed; a bare id in a consent
key names the account, profile and device with that id). A denial is never lost to how
it was keyed, and a grant never outlives its tombstone.

Ordering. Per subject the record with the latest `updated_at` wins, whatever partition it
came from and whenever it arrives; an older record arriving later is ignored; records
with equal times merge to the most restrictive. A missing `updated_at` counts as the
oldest time. An `updated_at` that is unreadable, negative or more than a day ahead of the
clock makes the record invalid; an invalid record without a usable time takes the stored
time of the subject, so it merges (restrictively) with what is there and a genuinely newer
record still replaces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import orjson

from streams.core.codec import decode_state_record
from streams.core.consent import subjects_of
from streams.core.errors import PartnerGuardError
from streams.core.models import ConsentRecord, Event, Malformed, SignupStatus, StateSnapshot, assemble
from streams.core.notices import (
    MARKER_PREFIX,
    STATE_PREFIX,
    InvalidRecordError,
    Marker,
    NoticeState,
    decode_marker,
    decode_state,
    marker_key,
    merge_markers,
    state_key,
)

log = logging.getLogger(__name__)

_GRANT = {None: 0, "granted": 1, "denied": 2}
_GRANT_BACK: tuple[Literal["granted", "denied"] | None, ...] = (None, "granted", "denied")
_BOOL = {None: 0, False: 1, True: 2}
_BOOL_BACK: tuple[bool | None, ...] = (None, False, True)
# Both 2-bit codes rank the same way: allowing (1) < unknown (0) < refusing (2).
_RESTRICTIVENESS = (1, 0, 2)
_STATUS: tuple[Literal["prospect", "in_signup", "member", "former_member"], ...] = (
    "prospect",
    "in_signup",
    "member",
    "former_member",
)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUS)}
_STATUS_UNKNOWN = 4  # an invalid or conflicting status: read back as "no status" (blocks)

# Packed layouts, low bits first. The disk store keeps these ints as they are: never reorder.
# Consent: four 2-bit choice codes, a 16-bit jurisdiction index, then updated_at (epoch ms).
_CHOICE_BITS = 2
_CHOICE_MASK = (1 << _CHOICE_BITS) - 1
_INTEREST_BASED_ADS_SHIFT = 0  # _GRANT code
_DO_NOT_SELL_SHIFT = 2  # _BOOL code
_MATCHED_ID_OPT_OUT_SHIFT = 4  # _BOOL code
_AD_COOKIES_SHIFT = 6  # _GRANT code
_CHOICE_SHIFTS = (_INTEREST_BASED_ADS_SHIFT, _DO_NOT_SELL_SHIFT, _MATCHED_ID_OPT_OUT_SHIFT, _AD_COOKIES_SHIFT)
_JURISDICTION_SHIFT = 8
_JURISDICTION_BITS = 16
_JURISDICTION_MASK = (1 << _JURISDICTION_BITS) - 1
_CONSENT_TIME_SHIFT = _JURISDICTION_SHIFT + _JURISDICTION_BITS
# Sign-up status: a 3-bit status code (an index in _STATUS, or _STATUS_UNKNOWN), then updated_at.
_STATUS_BITS = 3
_STATUS_MASK = (1 << _STATUS_BITS) - 1
# Index 0 of the jurisdiction table is "none". Past this, records that name a new
# jurisdiction are invalid (fail closed) instead of overflowing the packed index.
MAX_JURISDICTIONS = _JURISDICTION_MASK
MAX_JURISDICTION_CHARS = 64
MAX_ID_CHARS = 512
# Producers' clocks drift; a record stamped more than this ahead of ours is not believable.
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000
SUBJECT_KINDS = ("account", "profile", "device")
_SUBJECT_KINDS = frozenset(SUBJECT_KINDS)
_MOST_RESTRICTIVE = (
    _GRANT["denied"] << _INTEREST_BASED_ADS_SHIFT
    | _BOOL[True] << _DO_NOT_SELL_SHIFT
    | _BOOL[True] << _MATCHED_ID_OPT_OUT_SHIFT
    | _GRANT["denied"] << _AD_COOKIES_SHIFT
)  # jurisdiction index 0 (unknown)
_LOGGED_INVALID = 10  # log the first few invalid records, then every 1000th


# The storage seam: a dict here; anything implementing MutableMapping[bytes, int] (e.g. a
# disk-backed LMDB/RocksDB wrapper) can stand in when state outgrows one machine's memory.
KeyValueStore = MutableMapping[bytes, int]


class _InvalidRecordError(PartnerGuardError):
    """Why a state record is invalid (never contains identifiers or payload)."""


def _is_canonical_id(text: str) -> bool:
    return 0 < len(text) <= MAX_ID_CHARS and text == text.strip() and text.isprintable()


def canonical_subject(text: str) -> bool:
    """True when `text` is a canonical consent subject (`account|profile|device:<id>`)."""
    kind, _, ident = text.partition(":")
    return kind in _SUBJECT_KINDS and _is_canonical_id(ident)


def _named_subjects(text: str | None) -> list[str]:
    """The canonical subjects a (possibly malformed) consent key or subject names."""
    if not text:
        return []
    trimmed = text.strip()[: MAX_ID_CHARS + 16]
    kind, sep, ident = trimmed.partition(":")
    if sep and kind.strip().lower() in SUBJECT_KINDS:
        ident = ident.strip()
        return [f"{kind.strip().lower()}:{ident}"] if ident else []
    return [f"{k}:{trimmed}" for k in SUBJECT_KINDS] if trimmed else []


def _named_account(text: str | None) -> list[str]:
    trimmed = text.strip()[:MAX_ID_CHARS] if text else ""
    return [trimmed] if trimmed else []


@lru_cache(maxsize=4096)
def _rfc3339_ms(text: str) -> int | None:
    """Epoch ms of an RFC 3339 time with an offset; None otherwise (memoized: times repeat)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return int(moment.timestamp() * 1000) if moment.tzinfo is not None else None


def updated_at_ms(value: Any, now_ms: int) -> int:
    """Epoch ms of `updated_at` (RFC 3339 with offset, or epoch ms); 0 when absent.

    Raises `_InvalidRecordError` for anything unreadable, negative or more than a day in the future.
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _InvalidRecordError("updated_at has the wrong type")
    stamp = _rfc3339_ms(value) if isinstance(value, str) else value
    if stamp is None:
        raise _InvalidRecordError("updated_at is not RFC 3339 with a UTC offset")
    if not 0 <= stamp <= now_ms + MAX_FUTURE_SKEW_MS:
        raise _InvalidRecordError("updated_at out of range")
    return stamp


def _loose_field(value: bytes, name: str) -> str | None:
    """A string member of an otherwise invalid JSON object (to know what it names)."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    member = parsed.get(name) if isinstance(parsed, dict) else None
    return member if isinstance(member, str) else None


def _decode_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _Table:
    """What both tables share: the clock, the invalid-record count and its log."""

    def __init__(self, store: KeyValueStore | None, name: str, clock: Callable[[], float]) -> None:
        self._store: KeyValueStore = store if store is not None else {}
        self._name = name
        self._clock = clock
        self.invalid_records = 0

    def __len__(self) -> int:
        return len(self._store)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _count_invalid(self, why: str) -> None:
        self.invalid_records += 1
        if self.invalid_records <= _LOGGED_INVALID or self.invalid_records % 1000 == 0:
            log.warning(
                "invalid %s record (%s): stored fail-closed; %d so far", self._name, why, self.invalid_records
            )

    def _put(self, key: bytes, packed: int, stamp: int | None, shift: int) -> None:
        """Store `packed` (its time in the bits above `shift`) unless the stored one is newer.

        `stamp` None: the record has no usable time and takes the stored one (merges).
        """
        old = self._store.get(key)
        if old is None:
            self._store[key] = packed | (stamp or 0) << shift
            return
        old_stamp = old >> shift
        stamp = old_stamp if stamp is None else stamp
        if stamp > old_stamp:
            self._store[key] = packed | stamp << shift
        elif stamp == old_stamp:
            self._store[key] = self._merge(old & ((1 << shift) - 1), packed) | stamp << shift

    def _usable_time(self, value: bytes) -> int | None:
        """The time of an invalid record when it has a valid one, else None."""
        try:
            parsed = orjson.loads(value)
            stamp = parsed.get("updated_at") if isinstance(parsed, dict) else None
            return updated_at_ms(stamp, self._now_ms()) if stamp is not None else None
        except (orjson.JSONDecodeError, _InvalidRecordError):
            return None

    def _merge(self, old: int, new: int) -> int:
        """Two records with the same time: the most restrictive of both."""
        raise NotImplementedError


class ConsentTable(_Table):
    """`account:<id>` / `profile:<id>` / `device:<id>` → packed consent choices and time."""

    def __init__(
        self,
        store: KeyValueStore | None = None,
        clock: Callable[[], float] = time.time,
        jurisdictions: list[str | None] | None = None,
    ) -> None:
        """`jurisdictions`: the interned names a persistent store was written with (index 0 is none)."""
        super().__init__(store, "consent", clock)
        self._jurisdictions: list[str | None] = list(jurisdictions or [None])
        self._jurisdiction_index: dict[str | None, int] = {n: i for i, n in enumerate(self._jurisdictions)}

    def jurisdiction_names(self) -> list[str | None]:
        """The interned jurisdiction names by index (what a persistent store must keep)."""
        return self._jurisdictions

    def _intern(self, jurisdiction: str | None) -> int:
        index = self._jurisdiction_index.get(jurisdiction)
        if index is None:
            if jurisdiction is not None and len(jurisdiction) > MAX_JURISDICTION_CHARS:
                raise _InvalidRecordError("jurisdiction too long")
            index = len(self._jurisdictions)
            if index > MAX_JURISDICTIONS:
                raise _InvalidRecordError("jurisdiction table full")
            self._jurisdictions.append(jurisdiction)
            self._jurisdiction_index[jurisdiction] = index
        return index

    def _merge(self, old: int, new: int) -> int:
        merged = 0
        for shift in _CHOICE_SHIFTS:  # per choice: the most restrictive of the two
            a, b = old >> shift & _CHOICE_MASK, new >> shift & _CHOICE_MASK
            merged |= (a if _RESTRICTIVENESS[a] >= _RESTRICTIVENESS[b] else b) << shift
        jurisdiction_a = old >> _JURISDICTION_SHIFT & _JURISDICTION_MASK
        jurisdiction_b = new >> _JURISDICTION_SHIFT & _JURISDICTION_MASK
        return merged | (jurisdiction_a if jurisdiction_a == jurisdiction_b else 0) << _JURISDICTION_SHIFT

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the compacted topic (see the module docstring for the rules)."""
        subject = _decode_key(key)
        if value is None:  # a tombstone: consent unknown again for what the key named
            if subject is not None and canonical_subject(subject):
                self._store.pop(subject.encode(), None)
            else:  # neither keeps a grant nor loses a denial: restricts what the key names
                self._count_invalid("tombstone key is not a canonical subject")
                for name in _named_subjects(subject):
                    self._put(name.encode(), _MOST_RESTRICTIVE, None, _CONSENT_TIME_SHIFT)
            return
        try:
            self._apply_valid(subject, value)
        except _InvalidRecordError as exc:
            self._count_invalid(str(exc))
            named = dict.fromkeys(
                [*_named_subjects(subject), *_named_subjects(_loose_field(value, "subject"))]
            )
            usable = self._usable_time(value)
            for name in named:
                self._put(name.encode(), _MOST_RESTRICTIVE, usable, _CONSENT_TIME_SHIFT)

    def _apply_valid(self, subject: str | None, value: bytes) -> None:
        try:
            record = decode_state_record(value, ConsentRecord)
        except Exception:  # strict JSON (no duplicate keys) and strict types; anything else is invalid
            raise _InvalidRecordError("not a valid consent record") from None
        if subject is None or not canonical_subject(subject):
            raise _InvalidRecordError("key is not a canonical subject")
        if record.subject != subject:
            raise _InvalidRecordError("key and subject differ")
        stamp = updated_at_ms(record.updated_at, self._now_ms())
        packed = (
            _GRANT[record.interest_based_ads] << _INTEREST_BASED_ADS_SHIFT
            | _BOOL[record.do_not_sell_or_share] << _DO_NOT_SELL_SHIFT
            | _BOOL[record.matched_identifier_opt_out] << _MATCHED_ID_OPT_OUT_SHIFT
            | _GRANT[record.ad_cookies] << _AD_COOKIES_SHIFT
            | self._intern(record.jurisdiction) << _JURISDICTION_SHIFT
        )
        self._put(subject.encode(), packed, stamp, _CONSENT_TIME_SHIFT)

    def get(self, key: bytes) -> ConsentRecord | None:
        """The stored record of one subject."""
        packed = self._store.get(key)
        if packed is None:
            return None
        return assemble(
            ConsentRecord,
            {
                "subject": key.decode(),
                "updated_at": (packed >> _CONSENT_TIME_SHIFT) or None,
                "interest_based_ads": _GRANT_BACK[packed >> _INTEREST_BASED_ADS_SHIFT & _CHOICE_MASK],
                "do_not_sell_or_share": _BOOL_BACK[packed >> _DO_NOT_SELL_SHIFT & _CHOICE_MASK],
                "matched_identifier_opt_out": _BOOL_BACK[packed >> _MATCHED_ID_OPT_OUT_SHIFT & _CHOICE_MASK],
                "ad_cookies": _GRANT_BACK[packed >> _AD_COOKIES_SHIFT & _CHOICE_MASK],
                "jurisdiction": self._jurisdictions[packed >> _JURISDICTION_SHIFT & _JURISDICTION_MASK],
            },
        )


class SignupStatusTable(_Table):
    """Account id → packed sign-up status and time."""

    def __init__(self, store: KeyValueStore | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(store, "sign-up status", clock)

    def _merge(self, old: int, new: int) -> int:
        return old if old == new else _STATUS_UNKNOWN  # two statuses at one time: unknown

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record; the key must be the value's account id (module docstring)."""
        account = _decode_key(key)
        if value is None:  # a tombstone deletes what the key named
            if account is not None and _is_canonical_id(account):
                self._store.pop(account.encode(), None)
            else:  # the status of what the key names becomes unknown
                self._count_invalid("tombstone key is not a canonical account id")
                for name in _named_account(account):
                    self._put(name.encode(), _STATUS_UNKNOWN, None, _STATUS_BITS)
            return
        try:
            try:
                status = decode_state_record(value, SignupStatus)
            except Exception:  # strict JSON (no duplicate keys) and strict types
                raise _InvalidRecordError("not a valid sign-up status record") from None
            if account is None or not _is_canonical_id(account):
                raise _InvalidRecordError("key is not a canonical account id")
            if status.account_id != account:
                raise _InvalidRecordError("key and account_id differ")
            stamp = updated_at_ms(status.updated_at, self._now_ms())
            self._put(account.encode(), _STATUS_CODE[status.status], stamp, _STATUS_BITS)
        except _InvalidRecordError as exc:
            self._count_invalid(str(exc))
            named = dict.fromkeys(
                [*_named_account(account), *_named_account(_loose_field(value, "account_id"))]
            )
            usable = self._usable_time(value)
            for name in named:
                self._put(name.encode(), _STATUS_UNKNOWN, usable, _STATUS_BITS)

    def get(self, account_id: str) -> SignupStatus | None:
        """The status of one account; None when unknown, invalid or conflicting."""
        packed = self._store.get(account_id.encode())
        if packed is None or packed & _STATUS_MASK == _STATUS_UNKNOWN:
            return None
        return assemble(
            SignupStatus,
            {
                "account_id": account_id,
                "status": _STATUS[packed & _STATUS_MASK],
                "updated_at": (packed >> _STATUS_BITS) or None,
            },
        )


def snapshot_for(
    record: Event | Malformed, consent: ConsentTable, status: SignupStatusTable, stale: bool
) -> StateSnapshot:
    """The state a decision about `record` uses (and the blocked record will carry)."""
    if isinstance(record, Malformed):
        return StateSnapshot(stale=stale)
    found = []
    for subject in subjects_of(record):  # a plain loop: a generator costs more than the lookups
        stored = consent.get(subject.encode())
        if stored is not None:
            found.append(stored)
    signup = status.get(record.account_id) if record.account_id else None
    return assemble(StateSnapshot, {"consent": tuple(found), "signup_status": signup, "stale": stale})


def dumps_snapshot(snapshot: StateSnapshot) -> bytes:
    """The snapshot as JSON (for blocked records)."""
    return orjson.dumps(snapshot.model_dump(mode="json"))


PROGRESS_PREFIX = b"p|"
# Markers are read on every forward that carries an identifier, and most are read again
# unchanged: decoded once per distinct value (a marker is immutable; bounded memory).
_decoded_marker = lru_cache(maxsize=4096)(decode_marker)


class ForwardedTable:
    """The forwarded topic's changelog (`guard.forwarded`): forwarded markers and notice state.

    Keys `f|<partner>|<subject>` hold a marker (`streams.core.notices.Marker`), keys
    `n|<subject>` the subject's notice state; `p|` keys (the notice path's progress) are
    skipped. Applying a record is order-insensitive where several writers meet: markers
    merge (every value, the later time; a tombstone deletes), a notice state replaces the
    stored one unless it is older. So the records this instance wrote, folded in at its
    commit, and the same records read back from the topic later, give the same table.

    Writes of the batch being decided go to a layer (`open_layer`, `stage`): read before the
    table, folded in when the batch's transaction commits (`fold`), dropped when it aborts
    (`drop_layers`): an aborted batch's markers and notice states never count.
    """

    def __init__(self, store: MutableMapping[bytes, bytes] | None = None) -> None:
        self._store: MutableMapping[bytes, bytes] = store if store is not None else {}
        self._layers: list[dict[bytes, bytes | None]] = []
        self.invalid_records = 0

    def __len__(self) -> int:
        return len(self._store)

    def _count_invalid(self, why: str) -> None:
        self.invalid_records += 1
        if self.invalid_records <= _LOGGED_INVALID or self.invalid_records % 1000 == 0:
            log.warning("invalid forwarded-topic record (%s): ignored; %d so far", why, self.invalid_records)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the forwarded topic (or one this instance committed)."""
        if key and key.startswith(PROGRESS_PREFIX):
            return  # the notice path's progress (the job's `_note_progress`): nothing to keep
        if not key or not key.startswith((MARKER_PREFIX.encode(), STATE_PREFIX.encode())):
            self._count_invalid("unknown key")
            return
        if value is None:
            self._store.pop(key, None)
            return
        try:
            if key.startswith(MARKER_PREFIX.encode()):
                old_raw = self._store.get(key)
                old = _decoded_marker(old_raw) if old_raw is not None else None
                merged = merge_markers(old, _decoded_marker(value)).encode()
                # an exact-size copy: orjson's output keeps its 4 KiB buffer (measured: 4,089 B
                # a marker kept in memory, against 447 B of JSON)
                self._store[key] = bytes(memoryview(merged))
            else:
                new = decode_state(value)
                old_raw = self._store.get(key)
                if old_raw is None or decode_state(old_raw).seen_ms <= new.seen_ms:
                    self._store[key] = value
        except InvalidRecordError as exc:
            self._count_invalid(str(exc))

    def _raw(self, key: bytes) -> bytes | None:
        for layer in reversed(self._layers):
            if key in layer:
                return layer[key]
        return self._store.get(key)

    def marker(self, partner: str, subject: str) -> Marker | None:
        """The marker of (partner, subject), staged writes first."""
        raw = self._raw(marker_key(partner, subject))
        return _decoded_marker(raw) if raw is not None else None

    def notice_state(self, subject: str) -> NoticeState | None:
        """The notice state of one subject, staged writes first."""
        raw = self._raw(state_key(subject))
        return decode_state(raw) if raw is not None else None

    def open_layer(self) -> dict[bytes, bytes | None]:
        """Start the layer of a new batch (its writes until its transaction ends)."""
        layer: dict[bytes, bytes | None] = {}
        self._layers.append(layer)
        return layer

    def stage(self, key: bytes, value: bytes | None) -> None:
        """Write into the newest layer (straight into the table when no batch is open)."""
        if self._layers:
            self._layers[-1][key] = value
        else:
            self.apply(key, value)

    def fold(self, layer: dict[bytes, bytes | None]) -> None:
        """The layer's batch committed: apply its writes to the table."""
        for index, open_layer in enumerate(self._layers):
            if open_layer is layer:
                del self._layers[index]
                break
        for key, value in layer.items():
            self.apply(key, value)

    def drop_layers(self) -> None:
        """The open batches were aborted: forget their writes."""
        self._layers.clear()
