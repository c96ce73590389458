"""Consent and sign-up status tables, packed to stay small at millions of entries.

Each table maps the record key (bytes) to one packed int; a 1M-entry consent table costs
well under 250 bytes an entry (measured by `tests/test_state.py`). `KeyValueStore` is the
seam for a disk-backed store when state outgrows one machine's memory.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime
from typing import Literal

import orjson

from streams.core.codec import decode_state_record
from streams.core.consent import subjects_of
from streams.core.models import ConsentRecord, Event, Malformed, SignupStatus, StateSnapshot

_GRANT = {None: 0, "granted": 1, "denied": 2}
_GRANT_BACK: tuple[Literal["granted", "denied"] | None, ...] = (None, "granted", "denied")
_BOOL = {None: 0, False: 1, True: 2}
_BOOL_BACK: tuple[bool | None, ...] = (None, False, True)
_STATUS: tuple[Literal["prospect", "in_signup", "member", "former_member"], ...] = (
    "prospect",
    "in_signup",
    "member",
    "former_member",
)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUS)}
_TIME_SHIFT = 24


# The storage seam: a dict here; anything implementing MutableMapping[bytes, int] (e.g. a
# disk-backed LMDB/RocksDB wrapper) can stand in when state outgrows one machine's memory.
KeyValueStore = MutableMapping[bytes, int]


def epoch_ms(value: str | int | None) -> int:
    """Epoch milliseconds of an RFC 3339 string or epoch ms; 0 when absent or unreadable."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str):
        try:
            return max(int(datetime.fromisoformat(value).timestamp() * 1000), 0)
        except ValueError:
            return 0
    return 0


class ConsentTable:
    """`account:<id>` / `profile:<id>` / `device:<id>` → packed consent choices.

    An undecodable consent record is stored as the most restrictive record (everything
    denied or opted out): fail closed, never open.
    """

    def __init__(self, store: KeyValueStore | None = None) -> None:
        self._store: KeyValueStore = store if store is not None else {}
        self._jurisdictions: list[str | None] = [None]
        self._jurisdiction_index: dict[str | None, int] = {None: 0}
        self.invalid_records = 0

    def __len__(self) -> int:
        return len(self._store)

    def _intern(self, jurisdiction: str | None) -> int:
        index = self._jurisdiction_index.get(jurisdiction)
        if index is None:
            index = len(self._jurisdictions)
            if index >= 1 << 16:
                raise OverflowError("more than 65535 distinct jurisdictions")
            self._jurisdictions.append(jurisdiction)
            self._jurisdiction_index[jurisdiction] = index
        return index

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one record of the compacted topic; a tombstone deletes (consent unknown)."""
        if value is None:
            self._store.pop(key, None)
            return
        try:
            record = decode_state_record(value, ConsentRecord)
            packed = self._pack(record)
        except Exception:  # anything unreadable is stored fail-closed, never raised into the job
            self.invalid_records += 1
            packed = self._pack(self._fail_closed(key))
        self._store[key] = packed

    @staticmethod
    def _fail_closed(key: bytes) -> ConsentRecord:
        """The most restrictive record: everything denied or opted out."""
        return ConsentRecord.model_construct(
            subject=key.decode("utf-8", "replace"),
            interest_based_ads="denied",
            do_not_sell_or_share=True,
            matched_identifier_opt_out=True,
            ad_cookies="denied",
            updated_at=None,
            jurisdiction=None,
        )

    def _pack(self, record: ConsentRecord) -> int:
        return (
            _GRANT[record.interest_based_ads]
            | _BOOL[record.do_not_sell_or_share] << 2
            | _BOOL[record.matched_identifier_opt_out] << 4
            | _GRANT[record.ad_cookies] << 6
            | self._intern(record.jurisdiction) << 8
            | epoch_ms(record.updated_at) << _TIME_SHIFT
        )

    def get(self, key: bytes) -> ConsentRecord | None:
        """The stored record of one subject."""
        packed = self._store.get(key)
        if packed is None:
            return None
        return ConsentRecord.model_construct(
            subject=key.decode(),
            updated_at=(packed >> _TIME_SHIFT) or None,
            interest_based_ads=_GRANT_BACK[packed & 3],
            do_not_sell_or_share=_BOOL_BACK[packed >> 2 & 3],
            matched_identifier_opt_out=_BOOL_BACK[packed >> 4 & 3],
            ad_cookies=_GRANT_BACK[packed >> 6 & 3],
            jurisdiction=self._jurisdictions[packed >> 8 & 0xFFFF],
        )


class SignupStatusTable:
    """Account id → packed sign-up status."""

    def __init__(self, store: KeyValueStore | None = None) -> None:
        self._store: KeyValueStore = store if store is not None else {}
        self.invalid_records = 0

    def __len__(self) -> int:
        return len(self._store)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one record; a tombstone or an invalid record deletes (status unknown → block)."""
        if value is None:
            self._store.pop(key, None)
            return
        try:
            status = decode_state_record(value, SignupStatus)
        except Exception:  # unreadable: status unknown (blocks), never raised into the job
            self.invalid_records += 1
            self._store.pop(key, None)
            return
        self._store[status.account_id.encode()] = (
            _STATUS_CODE[status.status] | epoch_ms(status.updated_at) << 2
        )

    def get(self, account_id: str) -> SignupStatus | None:
        """The status of one account."""
        packed = self._store.get(account_id.encode())
        if packed is None:
            return None
        return SignupStatus.model_construct(
            account_id=account_id, status=_STATUS[packed & 3], updated_at=(packed >> 2) or None
        )


def snapshot_for(
    record: Event | Malformed, consent: ConsentTable, status: SignupStatusTable, stale: bool
) -> StateSnapshot:
    """The state a decision about `record` uses (and the blocked record will carry)."""
    if isinstance(record, Malformed):
        return StateSnapshot(stale=stale)
    found = [c for c in (consent.get(k.encode()) for k in subjects_of(record)) if c is not None]
    signup = status.get(record.account_id) if record.account_id else None
    return StateSnapshot.model_construct(consent=tuple(found), signup_status=signup, stale=stale)


def dumps_snapshot(snapshot: StateSnapshot) -> bytes:
    """The snapshot as JSON (for blocked records)."""
    return orjson.dumps(snapshot.model_dump(mode="json"))
