"""The disk state store: same answers as the memory tables, atomic checkpoints, rebuilds."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Rdict

from streams.runtime.state.store import (
    REBUILD_MARKER,
    Bounds,
    BoundsLookup,
    StateTables,
    StateTopic,
    StoreCorruptError,
    StoreLockedError,
    StoreTuning,
    offsets_misfit,
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


# -- one process per store, and a store that must fit the topic it mirrors ---------------------

_HOLD = """
import sys, time
from pathlib import Path
from streams.runtime.state.store import StoreTuning, open_state_tables
from rocksdict import Rdict
path, how = Path(sys.argv[1]), sys.argv[2]
if how == "guard":
    topics = {"consent": ("privacy.consent", 3), "signup_status": ("member.signup-status", 3)}
    tables = open_state_tables("rocksdb", path, topics, "cluster-a", StoreTuning(4, 1, 1))
else:  # a process that opens the database without the guard's lock (another tool, an old guard)
    db = Rdict(str(path / "consent"))
print("holding", flush=True)
sys.stdin.read()
"""


def _hold(path: Path, how: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    return holder


def _data_files(path: Path) -> list[str]:
    """The database's files (RocksDB's info LOG rotates on every open attempt)."""
    return sorted(f.name for f in path.iterdir() if not f.name.startswith("LOG"))


@pytest.mark.parametrize("how", ["guard", "rocksdb"])
def test_a_store_held_by_a_live_process_is_refused_never_deleted(tmp_path: Path, how: str) -> None:
    _filled(tmp_path, 50)
    holder = _hold(tmp_path, how)
    before = _data_files(tmp_path / "consent")
    try:
        with pytest.raises(StoreLockedError) as refused:
            open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, lock_wait_s=0.5)
        assert "another live process" in str(refused.value) and "state_dir" in str(refused.value)
        assert _data_files(tmp_path / "consent") == before  # nothing deleted
    finally:
        holder.communicate("")
    reopened = _open(tmp_path)  # the holder is gone: its lock went with it
    assert reopened.stores["consent"].rebuilt_because is None
    assert reopened.consent.get(b"account:000049") is not None
    reopened.close()


def test_the_lock_waits_for_a_holder_that_lets_go(tmp_path: Path) -> None:
    holder = _hold(tmp_path, "guard")
    threading.Timer(0.5, holder.communicate, [""]).start()
    tables = open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, lock_wait_s=120)
    assert holder.poll() is not None  # only opened once the holder was gone
    tables.close()


def test_a_lock_left_by_a_killed_process_is_no_obstacle(tmp_path: Path) -> None:
    holder = _hold(tmp_path, "guard")
    holder.kill()
    holder.wait()
    tables = open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, lock_wait_s=0)
    tables.close()


def _saved(path: Path, offsets: dict[int, int]) -> None:
    tables = _open(path)
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-01T00:00:00Z"))
    tables.checkpoint({("privacy.consent", p): o for p, o in offsets.items()})
    tables.close()


def _bounds(found: dict[int, tuple[int, int]] | None) -> BoundsLookup:
    def lookup(topic: str, saved: Mapping[int, int]) -> Bounds | None:
        return None if found is None else {p: found[p] for p in saved if p in found}

    return lookup


@pytest.mark.parametrize(
    ("bounds", "why"),
    [
        ({0: (0, 1), 1: (0, 0), 2: (0, 0)}, "past its end"),  # the topic was recreated: emptier
        ({0: (0, 40), 1: (30, 40), 2: (0, 0)}, "below its log start"),  # records deleted unread
        (None, "bounds unavailable"),  # the cluster did not answer: never resumed on faith
    ],
)
def test_saved_offsets_that_do_not_fit_the_topic_rebuild(
    tmp_path: Path, bounds: dict[int, tuple[int, int]] | None, why: str
) -> None:
    _saved(tmp_path, {0: 30, 1: 20})
    reopened = open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, _bounds(bounds))
    assert why in (reopened.stores["consent"].rebuilt_because or "")
    assert reopened.start_offsets() == {} and reopened.consent.get(b"account:a") is None
    reopened.close()


def test_saved_offsets_within_the_topic_resume(tmp_path: Path) -> None:
    _saved(tmp_path, {0: 30, 1: 20})
    bounds = _bounds({0: (0, 30), 1: (20, 90)})  # at the end, at the log start: both fit
    reopened = open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, bounds)
    assert reopened.stores["consent"].rebuilt_because is None
    assert reopened.start_offsets()[("privacy.consent", 0)] == 30
    reopened.close()


@pytest.mark.parametrize("edited", [{"0": 10**12}, {"0": -1}, {"7": 3}, {"0": "12"}, {"x": 1}, [1, 2]])
def test_a_hand_edited_checkpoint_rebuilds(tmp_path: Path, edited: object) -> None:
    _saved(tmp_path, {0: 1})
    db = Rdict(str(tmp_path / "consent"))  # the operator's edit, guard stopped
    db[b"\x00offsets"] = orjson.dumps(edited)
    db.close()
    reopened = open_state_tables("rocksdb", tmp_path, TOPICS, "cluster-a", TUNING, _bounds({0: (0, 5)}))
    assert reopened.stores["consent"].rebuilt_because is not None
    assert reopened.start_offsets() == {} and reopened.consent.get(b"account:a") is None
    reopened.close()


def test_a_topic_recreated_under_the_same_name_rebuilds(tmp_path: Path) -> None:
    ids: dict[str, StateTopic] = {
        "consent": StateTopic("privacy.consent", 3, "id-1"),
        "signup_status": StateTopic(*TOPICS["signup_status"]),
    }
    tables = open_state_tables("rocksdb", tmp_path, ids, "cluster-a", TUNING)
    tables.consent.apply(b"account:a", _consent("account:a", "2026-11-01T00:00:00Z"))
    tables.checkpoint({("privacy.consent", 0): 1})
    tables.close()
    recreated = {**ids, "consent": StateTopic("privacy.consent", 3, "id-2")}
    reopened = open_state_tables("rocksdb", tmp_path, recreated, "cluster-a", TUNING)
    assert "another cluster or topic layout" in (reopened.stores["consent"].rebuilt_because or "")
    assert reopened.consent.get(b"account:a") is None
    reopened.close()


@given(
    saved=st.dictionaries(st.integers(-1, 4), st.integers(0, 50), max_size=4),
    bounds=st.dictionaries(st.integers(0, 3), st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=4),
)
def test_property_offsets_fit_only_inside_every_partition(
    saved: dict[int, int], bounds: dict[int, tuple[int, int]]
) -> None:
    fits = all(p in bounds and p < 3 and bounds[p][0] <= o <= bounds[p][1] for p, o in saved.items())
    assert (offsets_misfit(saved, 3, bounds) is None) == fits


def test_a_state_dir_that_cannot_be_written_is_refused_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreLockedError) as refused:
        open_state_tables("rocksdb", blocker / "state", TOPICS, "cluster-a", TUNING, lock_wait_s=0)
    assert "cannot be used" in str(refused.value) and "\n" not in str(refused.value)


def test_every_worker_gets_its_own_state_dir() -> None:
    from streams.runtime.config import Settings
    from streams.runtime.workers import worker_environment

    settings = Settings(
        bootstrap_servers="k:9092", workers=3, state_store="rocksdb", state_dir=Path("/var/x")
    )
    dirs = [worker_environment(settings, i)["PARTNER_GUARD_STATE_DIR"] for i in range(3)]
    assert dirs == ["/var/x/worker-0", "/var/x/worker-1", "/var/x/worker-2"]
