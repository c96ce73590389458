"""The disk state store: same answers as the memory tables, atomic checkpoints, rebuilds."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.runtime.state.store import (
    REBUILD_MARKER,
    StateTables,
    StoreCorruptError,
    StoreTuning,
    open_state_tables,
)
from streams.runtime.state.tables import ConsentTable, SignupStatusTable

TOPICS = {"consent": ("privacy.consent", 3), "signup_status": ("member.signup-status", 3)}
TUNING = StoreTuning(cache_entries=4, block_cache_mb=1, write_buffer_mb=1)  # tiny: reads hit RocksDB


def _open(path: Path, cluster: str = "cluster-a", topics: dict[str, tuple[str, int]] = TOPICS) -> StateTables:
    return open_state_tables("rocksdb", path, topics, cluster, TUNING)


def _consent(subject: str, when: str, ads: str = "granted", jurisdiction: str = "US-CA") -> bytes:
    return orjson.dumps(
        {"subject": subject, "updated_at": when, "interest_based_ads": ads, "jurisdiction": jurisdiction}
    )


SUBJECTS = [f"{kind}:{n}" for kind in ("account", "profile", "device") for n in ("a", "b", "c")]
record = st.tuples(
    st.sampled_from(SUBJECTS),
    st.sampled_from([*SUBJECTS, "account: a", "", "bogus"]),  # key: usually right, sometimes not
    st.one_of(
        st.none(),
        st.builds(
            _consent,
            st.sampled_from(SUBJECTS),
            st.sampled_from(["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]),
            st.sampled_from(["granted", "denied"]),
            st.sampled_from(["US-CA", "DE", "GB"]),
        ),
        st.just(b"{garbage"),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record, max_size=40), checkpoint_every=st.integers(1, 10))
def test_property_disk_store_answers_like_the_memory_table(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, bytes | None]],
    checkpoint_every: int,
) -> None:
    memory = ConsentTable()
    tables = _open(tmp_path_factory.mktemp("store"))
    for number, (_, key, value) in enumerate(records, start=1):
        memory.apply(key.encode(), value)
        tables.consent.apply(key.encode(), value)
        if number % checkpoint_every == 0:
            tables.checkpoint({("privacy.consent", 0): number})
    for subject in SUBJECTS:
        assert tables.consent.get(subject.encode()) == memory.get(subject.encode())
    tables.close()


def test_checkpoint_restores_data_offsets_and_jurisdictions(tmp_path: Path) -> None:
    tables = _open(tmp_path)
    assert tables.stores["consent"].rebuilt_because == "no local store"
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-01T00:00:00Z", "denied", "DE"))
    tables.consent.apply(b"device:d", _consent("device:d", "2026-11-01T00:00:00Z", "granted", "US-CA"))
    tables.signup_status.apply(b"acct-1", orjson.dumps({"account_id": "acct-1", "status": "member"}))
    tables.checkpoint({("privacy.consent", 1): 2, ("member.signup-status", 0): 1})
    consent, statuses = tables.consent, tables.signup_status
    before = consent.get(b"account:a"), consent.get(b"device:d"), statuses.get("acct-1")
    tables.close()

    reopened = _open(tmp_path)
    assert reopened.stores["consent"].rebuilt_because is None
    assert reopened.start_offsets() == {("privacy.consent", 1): 2, ("member.signup-status", 0): 1}
    after = (
        reopened.consent.get(b"account:a"),
        reopened.consent.get(b"device:d"),
        reopened.signup_status.get("acct-1"),
    )
    assert after == before and after[0] is not None and after[0].jurisdiction == "DE"
    # a jurisdiction interned after the restart gets a new index, not one already in use
    reopened.consent.apply(b"profile:p", _consent("profile:p", "2026-11-01T00:00:00Z", "granted", "GB"))
    stored = reopened.consent.get(b"profile:p")
    assert stored is not None and stored.jurisdiction == "GB"
    assert reopened.consent.get(b"account:a") == before[0]
    reopened.close()


def test_records_applied_after_the_last_checkpoint_are_not_on_disk(tmp_path: Path) -> None:
    tables = _open(tmp_path)
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-01T00:00:00Z"))
    tables.checkpoint({("privacy.consent", 0): 1})
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-02T00:00:00Z", "denied"))
    tables.close()  # a crash before the next checkpoint
    reopened = _open(tmp_path)
    stored = reopened.consent.get(b"account:a")
    assert reopened.start_offsets() == {("privacy.consent", 0): 1}  # the denial is read again from here
    assert stored is not None and stored.interest_based_ads == "granted"
    reopened.close()


@pytest.mark.parametrize(
    ("cluster", "topics"),
    [
        ("cluster-b", TOPICS),
        ("cluster-a", {**TOPICS, "consent": ("privacy.consent", 6)}),
        ("cluster-a", {**TOPICS, "consent": ("other.consent", 3)}),
    ],
)
def test_a_store_from_another_cluster_or_layout_is_rebuilt(
    tmp_path: Path, cluster: str, topics: dict[str, tuple[str, int]]
) -> None:
    tables = _open(tmp_path)
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-01T00:00:00Z"))
    tables.checkpoint({("privacy.consent", 0): 1})
    tables.close()
    reopened = _open(tmp_path, cluster, topics)
    assert "another cluster or topic layout" in (reopened.stores["consent"].rebuilt_because or "")
    assert reopened.consent.get(b"account:a") is None and reopened.start_offsets() == {}
    reopened.close()


def _filled(path: Path, entries: int = 5000) -> None:
    tables = _open(path)
    for n in range(entries):
        subject = f"account:{n:06d}"
        tables.consent.apply(subject.encode(), _consent(subject, "2026-11-01T00:00:00Z"))
    tables.checkpoint({("privacy.consent", 0): entries})
    tables.close()


def test_a_truncated_store_is_rebuilt(tmp_path: Path) -> None:
    _filled(tmp_path)
    for file in (tmp_path / "consent").iterdir():
        if file.name.startswith("MANIFEST"):
            file.write_bytes(file.read_bytes()[:10])
    reopened = _open(tmp_path)
    assert "cannot be opened" in (reopened.stores["consent"].rebuilt_because or "")
    assert reopened.start_offsets() == {} and len(reopened.consent) == 0
    reopened.close()


def test_a_garbled_store_is_rebuilt_never_read(tmp_path: Path) -> None:
    _filled(tmp_path)
    tables = _open(tmp_path)  # flush the memtable into a table file
    tables.stores["consent"].store._db.flush()
    tables.close()
    files = [f for f in (tmp_path / "consent").iterdir() if f.suffix in (".sst", ".log") and f.stat().st_size]
    assert files
    for file in files:
        raw = bytearray(file.read_bytes())
        for at in range(64, len(raw) - 64, 97):
            raw[at] ^= 0xFF
        file.write_bytes(bytes(raw))
    reopened = _open(tmp_path)
    if reopened.stores["consent"].rebuilt_because is None:  # not seen at open: seen at the first read
        with pytest.raises(StoreCorruptError):
            for n in range(5000):
                reopened.consent.get(f"account:{n:06d}".encode())
        assert (tmp_path / "consent" / REBUILD_MARKER).exists()
        reopened.close()
        reopened = _open(tmp_path)
    assert reopened.stores["consent"].rebuilt_because is not None
    assert reopened.start_offsets() == {} and reopened.consent.get(b"account:000001") is None
    reopened.close()


def test_memory_store_needs_no_directory(tmp_path: Path) -> None:
    tables = open_state_tables("memory", tmp_path / "unused", TOPICS, None, TUNING)
    assert isinstance(tables.signup_status, SignupStatusTable) and not tables.stores
    tables.checkpoint({("privacy.consent", 0): 1})
    assert not (tmp_path / "unused").exists()
