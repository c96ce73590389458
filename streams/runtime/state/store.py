"""Where the state tables live: in memory, or on local disk in RocksDB with checkpoints.

The compacted topics stay the source of truth. The disk store (`state_store: rocksdb`) is a
local, checkpointed copy of them, the way Kafka Streams keeps a global table and Quix
Streams keeps its state:

- One RocksDB database per table under `state_dir` (`consent/`, `signup-status/`, and
  `forwarded/` when opt-out notices are on).
- Writes go to an in-memory pending layer; `checkpoint()` writes them, the topic offsets
  they reach and any new jurisdiction names in ONE write batch. After a crash the database
  therefore holds exactly the records up to its recorded offsets, never half a batch.
- One process at a time: `state_dir/guard.lock` is held (flock) while the store is open. A
  second process waits `LOCK_WAIT_S` for it, then refuses to start (`StoreLockedError`);
  a lock held by a live process is never read as damage, so a live store is never deleted.
  (`--workers N` gives worker i its own `state_dir/worker-<i>`.)
- On start the recorded identity (cluster id, topic name, topic id where the broker has
  one, partition count, format) is compared with the cluster's, and the saved offsets with
  each partition's log start and end (`offsets_misfit`): a topic deleted and recreated under
  the same name, or a checkpoint edited by hand, does not fit. A missing store, one that does
  not fit, one that cannot be opened (truncated or garbled files), or one marked for rebuild
  is wiped and rebuilt from the beginning of the topic. Either way the reader then catches
  up to the end offsets before the guard becomes ready: no decision is ever made from a
  half-built or foreign store.
- Reads go through a bounded cache (hits and misses) in front of RocksDB's block cache;
  memory is bounded by `state_cache_entries`, `state_block_cache_mb` and
  `state_write_buffer_mb` whatever the table size.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from streams.core.errors import PartnerGuardError, RefusalError
from streams.runtime.state.tables import ConsentTable, ForwardedTable, SignupStatusTable

log = logging.getLogger(__name__)

# 2: the identity names the topic id, and saved offsets are checked against the partitions.
STORE_FORMAT = 2
# Metadata keys start with NUL; canonical subjects and account ids are printable, so they never do.
_META_PREFIX = b"\x00"
_IDENTITY_KEY = b"\x00identity"
_OFFSETS_KEY = b"\x00offsets"
_CHECKPOINT_TIME_KEY = b"\x00checkpointed_at"
_JURISDICTION_PREFIX = b"\x00jurisdiction:"
# A file whose presence forces a rebuild at the next start (written when a read finds corruption).
REBUILD_MARKER = "REBUILD"
_MISSING = object()
# The lock of a whole state directory (both tables); RocksDB's own LOCK files sit inside them.
LOCK_FILE = "guard.lock"
# How long a start waits for a state directory another live process holds (a restart whose
# predecessor is still closing), before it refuses.
LOCK_WAIT_S = 15.0
_LOCK_POLL_S = 0.2
# RocksDB's words for "another open handle holds this database" (a process, or this one).
_ROCKSDB_LOCK_ERRORS = ("While lock file", "lock hold by current process")


class StoreCorruptError(PartnerGuardError, RuntimeError):
    """A read found the local store damaged; it is rebuilt at the next start."""


class StoreLockedError(RefusalError):
    """The state directory cannot be taken: another live process holds it (never damage, never
    deleted), or it cannot be created or written."""


# partition -> (log start offset, end offset) of one topic, as the cluster reports them now.
Bounds = Mapping[int, tuple[int, int]]
# Looks up the bounds of a topic's partitions; None when the cluster does not answer.
# (The lookup gets the saved offsets: the partitions to look up are their keys.)
BoundsLookup = Callable[[str, Mapping[int, int]], Bounds | None]


class StateTopic(NamedTuple):
    """A state topic as the cluster describes it now: what a checkpoint must match."""

    name: str
    partitions: int
    topic_id: str | None = None


@dataclass
class DirLock:
    """An exclusive flock on `state_dir/guard.lock`, held while the store is open."""

    path: Path
    fd: int

    def release(self) -> None:
        """Give the directory up (closing the file releases the flock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def lock_state_dir(state_dir: Path, wait_s: float = LOCK_WAIT_S) -> DirLock:
    """Take `state_dir` for this process, waiting up to `wait_s` for a live holder to let go.

    The flock dies with its process (kill -9 included), so a lock found held always belongs to
    a live process: refuse (`StoreLockedError`), never treat it as damage.
    """
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreLockedError(
            f"state_dir {state_dir} cannot be used ({exc.strerror}): "
            "point PARTNER_GUARD_STATE_DIR at a directory this user can write"
        ) from None
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreLockedError(
                    f"state_dir {state_dir} is in use by another live process (pid {_lock_holder(path)}): "
                    "give every instance its own state_dir (PARTNER_GUARD_STATE_DIR), or stop the other one"
                ) from None
            if not waited:
                log.warning(
                    "state_dir %s is held by pid %s: waiting up to %.0f s for it",
                    state_dir,
                    _lock_holder(path),
                    wait_s,
                )
                waited = True
            time.sleep(_LOCK_POLL_S)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return DirLock(path, fd)


def offsets_misfit(saved: Mapping[int, int], partitions: int, bounds: Bounds | None) -> str | None:
    """Why saved offsets cannot be resumed from on the topic as it is now; None when they can.

    A saved offset is where the reader continues: it must name an existing partition and lie
    within [log start, end]. Past the end, the topic was recreated (or the checkpoint edited)
    and resuming would skip what it holds now; below the log start, records were deleted
    unread. Either way the store is rebuilt, never resumed. Unknown bounds do not fit either.
    """
    if not saved:
        return None
    if bounds is None:
        return "partition bounds unavailable"
    for partition, offset in sorted(saved.items()):
        if not 0 <= partition < partitions or partition not in bounds:
            return f"saved offset for partition {partition}, which the topic does not have"
        low, end = bounds[partition]
        if offset > end:
            return f"saved offset {offset} of partition {partition} is past its end {end}"
        if offset < low:
            return f"saved offset {offset} of partition {partition} is below its log start {low}"
    return None


def _saved_offsets(raw: Any) -> dict[int, int] | None:
    """The checkpoint's offsets, or None when they are not a map of partition -> offset >= 0."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return None
    try:
        offsets = {int(p): o for p, o in raw.items()}
    except ValueError:
        return None
    if not all(type(o) is int and o >= 0 for o in offsets.values()):
        return None
    return offsets


def _pack(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _unpack(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class StoreTuning:
    """Memory bounds of one disk store."""

    cache_entries: int = 100_000
    block_cache_mb: int = 64
    write_buffer_mb: int = 16


class RocksStore(MutableMapping[bytes, int]):
    """A `KeyValueStore` on RocksDB: subject → packed int, with a pending layer and a cache."""

    _pack = staticmethod(_pack)
    _unpack = staticmethod(_unpack)

    def __init__(self, path: Path, tuning: StoreTuning) -> None:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_paranoid_checks(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(tuning.block_cache_mb << 20))
        table.set_bloom_filter(10, False)  # most profile/device lookups miss: skip them cheaply
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(tuning.write_buffer_mb << 20)
        options.set_max_write_buffer_number(2)
        options.set_keep_log_file_num(2)
        self.path = path
        self._db = Rdict(str(path), options)
        self._pending: dict[bytes, int | None] = {}
        self._meta_pending: dict[bytes, bytes] = {}
        self._cache: OrderedDict[bytes, int | None] = OrderedDict()
        self._cache_entries = tuning.cache_entries
        self._meta_keys = {key for key, _ in self._meta_items(_META_PREFIX)}

    # -- the mapping ------------------------------------------------------------------------

    def _read(self, key: bytes) -> int | None:
        if key in self._pending:
            return self._pending[key]
        cached = self._cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        try:
            raw = self._db.get(key)
        except Exception as exc:  # rocksdict raises plain Exception("Corruption: ...")
            (self.path / REBUILD_MARKER).touch()
            raise StoreCorruptError(f"state store {self.path} is damaged; rebuilt at next start") from exc
        value = self._unpack(raw) if raw is not None else None
        if len(self._cache) >= self._cache_entries:
            self._cache.popitem(last=False)  # oldest first: bounded, O(1) (a dict's first key is not)
        self._cache[key] = value
        return value

    def __getitem__(self, key: bytes) -> int:
        value = self._read(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: int) -> None:
        self._pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if self._read(key) is None:
            raise KeyError(key)
        self._pending[key] = None

    def __iter__(self) -> Iterator[bytes]:
        for key, value in self._pending.items():
            if value is not None:
                yield key
        for stored in self._db.keys():  # noqa: SIM118 (Rdict has no __iter__)
            if (
                isinstance(stored, bytes)
                and not stored.startswith(_META_PREFIX)
                and stored not in self._pending
            ):
                yield stored

    def __len__(self) -> int:
        """Entries (RocksDB's estimate for what is on disk, plus what is pending)."""
        on_disk = self._db.property_int_value("rocksdb.estimate-num-keys") or 0
        return max(0, on_disk - len(self._meta_keys)) + sum(v is not None for v in self._pending.values())

    # -- metadata and checkpoints ---------------------------------------------------------------

    def _meta_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Metadata entries whose key starts with `prefix` (they sort before every subject)."""
        for key, raw in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not isinstance(raw, bytes) or not key.startswith(prefix):
                return
            yield key, raw

    def meta(self, key: bytes) -> Any:
        """A JSON metadata value, or None."""
        raw = self._db.get(key)
        return orjson.loads(raw) if raw is not None else None

    def put_meta(self, key: bytes, value: Any) -> None:
        """Stage a metadata value for the next checkpoint."""
        self._meta_pending[key] = orjson.dumps(value)

    def jurisdictions(self) -> list[str | None]:
        """The interned jurisdiction names, by index (index 0 is none)."""
        names = {
            int(key[len(_JURISDICTION_PREFIX) :]): orjson.loads(raw)
            for key, raw in self._meta_items(_JURISDICTION_PREFIX)
        }
        return [None, *(names[i] for i in range(1, len(names) + 1))]

    def checkpoint(self, offsets: dict[int, int], now: float) -> None:
        """Write pending entries, metadata and the offsets they reach in one atomic batch."""
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, self._pack(value))
        for key, raw in self._meta_pending.items():
            batch.put(key, raw)
        batch.put(_OFFSETS_KEY, orjson.dumps({str(p): o for p, o in offsets.items()}))
        batch.put(_CHECKPOINT_TIME_KEY, orjson.dumps(now))
        self._db.write(batch)
        self._meta_keys.update((*self._meta_pending, _OFFSETS_KEY, _CHECKPOINT_TIME_KEY))
        for key, value in self._pending.items():
            if key in self._cache:
                self._cache[key] = value
        self._pending.clear()
        self._meta_pending.clear()

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        """Close the database (pending, un-checkpointed writes are dropped)."""
        self._db.close()


def _same(raw: bytes) -> bytes:
    return raw


class RocksBytesStore(RocksStore):
    """The same store with bytes values (the forwarded table's records, as read)."""

    _pack = staticmethod(_same)  # type: ignore[assignment]
    _unpack = staticmethod(_same)  # type: ignore[assignment]


@dataclass
class TableStore:
    """One table's disk store and what is known about its checkpoint."""

    topic: str
    store: RocksStore
    start_offsets: dict[int, int]
    rebuilt_because: str | None
    checkpointed_at: float | None = None
    jurisdictions_saved: int = 0


def _identity(cluster_id: str | None, topic: StateTopic) -> dict[str, Any]:
    return {
        "format": STORE_FORMAT,
        "cluster_id": cluster_id,
        "topic": topic.name,
        "topic_id": topic.topic_id,
        "partitions": topic.partitions,
    }


def open_table_store(
    path: Path,
    topic: StateTopic,
    cluster_id: str | None,
    tuning: StoreTuning,
    bounds: BoundsLookup | None = None,
    kind: type[RocksStore] = RocksStore,
) -> TableStore:
    """Open a table's store, or wipe and recreate it when it cannot be trusted (module docstring).

    `bounds` looks up the topic's partition bounds for the offsets check (None: no check, for
    tools that open a store without a broker).
    """
    expected = _identity(cluster_id, topic)
    why: str | None = None
    store: RocksStore | None = None
    offsets: dict[int, int] | None = None
    if (path / REBUILD_MARKER).exists():
        why = "marked for rebuild after a damaged read"
    elif not (path / "CURRENT").exists():
        why = "no local store"
    else:
        try:
            store = kind(path, tuning)
            found = store.meta(_IDENTITY_KEY)
            offsets = _saved_offsets(store.meta(_OFFSETS_KEY))
            if found != expected:
                why = f"store is from another cluster or topic layout ({found} != {expected})"
            elif offsets is None:
                why = "checkpoint offsets unreadable"
            elif bounds is not None and offsets:
                exists = all(0 <= p < topic.partitions for p in offsets)  # else no lookup: it misfits
                why = offsets_misfit(offsets, topic.partitions, bounds(topic.name, offsets) if exists else {})
        except Exception as exc:  # open or meta read failed: damaged files, or a live holder
            if any(marker in str(exc) for marker in _ROCKSDB_LOCK_ERRORS):
                if store is not None:
                    store.close()
                raise StoreLockedError(
                    f"state store {path} is open in another live process: give every instance its own "
                    "state_dir (PARTNER_GUARD_STATE_DIR), or stop the other one"
                ) from None
            why = f"store cannot be opened ({type(exc).__name__})"
    if why is None and store is not None and offsets is not None:
        return TableStore(topic.name, store, offsets, None, store.meta(_CHECKPOINT_TIME_KEY))
    if store is not None:
        store.close()
    log.warning("state store %s: rebuilding from topic %s (%s)", path, topic.name, why)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    store = kind(path, tuning)
    store.put_meta(_IDENTITY_KEY, expected)
    return TableStore(topic.name, store, {}, why)


# Each table's folder inside state_dir.
TABLE_FOLDERS = {"consent": "consent", "signup_status": "signup-status", "forwarded": "forwarded"}


@dataclass
class StateTables:
    """The state tables and, for the disk store, their checkpoints."""

    consent: ConsentTable
    signup_status: SignupStatusTable
    stores: dict[str, TableStore] = field(default_factory=dict)
    forwarded: ForwardedTable = field(default_factory=ForwardedTable)
    lock: DirLock | None = None

    def start_offsets(self) -> dict[tuple[str, int], int]:
        """Where the reader resumes, per (topic, partition); absent means the beginning."""
        return {(ts.topic, p): o for ts in self.stores.values() for p, o in ts.start_offsets.items()}

    def checkpoint(self, positions: dict[tuple[str, int], int]) -> None:
        """Persist what has been applied up to `positions` (no-op for the memory store)."""
        now = time.time()
        for name, table_store in self.stores.items():
            if name == "consent":
                names = self.consent.jurisdiction_names()
                for index in range(max(1, table_store.jurisdictions_saved), len(names)):
                    table_store.store.put_meta(_JURISDICTION_PREFIX + b"%d" % index, names[index])
                table_store.jurisdictions_saved = len(names)
            offsets = {p: o for (t, p), o in positions.items() if t == table_store.topic}
            table_store.store.checkpoint(offsets, now)
            table_store.checkpointed_at = now

    def close(self) -> None:
        """Close the disk stores, then give the state directory up."""
        for table_store in self.stores.values():
            table_store.store.close()
        if self.lock is not None:
            self.lock.release()


def open_state_tables(
    kind: str,
    state_dir: Path,
    topics: Mapping[str, tuple[str, int] | StateTopic],
    cluster_id: str | None,
    tuning: StoreTuning,
    bounds: BoundsLookup | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> StateTables:
    """The consent and sign-up tables (and the forwarded table) on the configured store.

    `topics` maps "consent", "signup_status" (and "forwarded", when opt-out notices are on)
    to a `StateTopic` (or (name, partition count)); `bounds` checks saved offsets
    (`open_table_store`). The disk store first takes `state_dir`'s lock (`lock_state_dir`).
    """
    if kind == "memory":
        return StateTables(ConsentTable(), SignupStatusTable())
    lock = lock_state_dir(state_dir, lock_wait_s)
    opened: dict[str, TableStore] = {}
    try:
        for name, folder in (
            ("consent", "consent"),
            ("signup_status", "signup-status"),
            ("forwarded", "forwarded"),
        ):
            if name in topics:
                opened[name] = open_table_store(
                    state_dir / folder,
                    StateTopic(*topics[name]),
                    cluster_id,
                    tuning,
                    bounds,
                    RocksBytesStore if name == "forwarded" else RocksStore,
                )
    except BaseException:
        for table_store in opened.values():
            table_store.store.close()
        lock.release()
        raise
    consent, status = opened["consent"], opened["signup_status"]
    names = consent.store.jurisdictions()
    consent.jurisdictions_saved = len(names)
    forwarded = ForwardedTable(opened["forwarded"].store) if "forwarded" in opened else ForwardedTable()  # type: ignore[arg-type]
    return StateTables(
        ConsentTable(consent.store, jurisdictions=names),
        SignupStatusTable(status.store),
        opened,
        forwarded=forwarded,
        lock=lock,
    )


def report_store_metrics(tables: StateTables, metrics: Any, now: float) -> None:
    """Disk bytes and checkpoint age per table (nothing for the memory store)."""
    for name, table_store in tables.stores.items():
        metrics.state_store_bytes.labels(name).set(table_store.store.disk_bytes())
        if table_store.checkpointed_at is not None:
            metrics.state_checkpoint_age.labels(name).set(max(0.0, now - table_store.checkpointed_at))
