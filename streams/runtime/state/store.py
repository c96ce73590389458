"""Where the state tables live: in memory, or on local disk in RocksDB with checkpoints.

The compacted topics stay the source of truth. The disk store (`state_store: rocksdb`) is a
local, checkpointed copy of them, the way Kafka Streams keeps a global table and Quix
Streams keeps its state:

- One RocksDB database per table under `state_dir` (`consent/`, `signup-status/`, and
  `forwarded/` when opt-out notices are on).
- Writes go to an in-memory pending layer; `checkpoint()` writes them, the topic offsets
  they reach and any new jurisdiction names in ONE write batch. After a crash the database
  therefore holds exactly the records up to its recorded offsets, never half a batch.
- On start the recorded identity (cluster id, topic, partition count, format) is compared
  with the cluster's. A missing store, one from another cluster or topic layout, one that
  cannot be opened (truncated or garbled files), or one marked for rebuild is wiped and
  rebuilt from the beginning of the topic. Either way the reader then catches up to the
  end offsets before the guard becomes ready: no decision is ever made from a half-built
  store.
- Reads go through a bounded cache (hits and misses) in front of RocksDB's block cache;
  memory is bounded by `state_cache_entries`, `state_block_cache_mb` and
  `state_write_buffer_mb` whatever the table size.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from streams.core.errors import PartnerGuardError
from streams.runtime.state.tables import ConsentTable, ForwardedTable, SignupStatusTable

log = logging.getLogger(__name__)

STORE_FORMAT = 1
# Metadata keys start with NUL; canonical subjects and account ids are printable, so they never do.
_META_PREFIX = b"\x00"
_IDENTITY_KEY = b"\x00identity"
_OFFSETS_KEY = b"\x00offsets"
_CHECKPOINT_TIME_KEY = b"\x00checkpointed_at"
_JURISDICTION_PREFIX = b"\x00jurisdiction:"
# A file whose presence forces a rebuild at the next start (written when a read finds corruption).
REBUILD_MARKER = "REBUILD"
_MISSING = object()


class StoreCorruptError(PartnerGuardError, RuntimeError):
    """A read found the local store damaged; it is rebuilt at the next start."""


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


def _identity(cluster_id: str | None, topic: str, partitions: int) -> dict[str, Any]:
    return {"format": STORE_FORMAT, "cluster_id": cluster_id, "topic": topic, "partitions": partitions}


def open_table_store(
    path: Path,
    topic: str,
    partitions: int,
    cluster_id: str | None,
    tuning: StoreTuning,
    kind: type[RocksStore] = RocksStore,
) -> TableStore:
    """Open a table's store, or wipe and recreate it when it cannot be trusted (module docstring)."""
    expected = _identity(cluster_id, topic, partitions)
    why: str | None = None
    store: RocksStore | None = None
    if (path / REBUILD_MARKER).exists():
        why = "marked for rebuild after a damaged read"
    elif not (path / "CURRENT").exists():
        why = "no local store"
    else:
        try:
            store = kind(path, tuning)
            found = store.meta(_IDENTITY_KEY)
            if found != expected:
                why = f"store is from another cluster or topic layout ({found} != {expected})"
        except Exception as exc:  # open or meta read failed: damaged files
            why = f"store cannot be opened ({type(exc).__name__})"
    if why is None and store is not None:
        offsets = store.meta(_OFFSETS_KEY) or {}
        return TableStore(
            topic,
            store,
            {int(p): int(o) for p, o in offsets.items()},
            None,
            store.meta(_CHECKPOINT_TIME_KEY),
        )
    if store is not None:
        store.close()
    log.warning("state store %s: rebuilding from topic %s (%s)", path, topic, why)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    store = kind(path, tuning)
    store.put_meta(_IDENTITY_KEY, expected)
    return TableStore(topic, store, {}, why)


@dataclass
class StateTables:
    """The state tables and, for the disk store, their checkpoints."""

    consent: ConsentTable
    signup_status: SignupStatusTable
    stores: dict[str, TableStore] = field(default_factory=dict)
    forwarded: ForwardedTable = field(default_factory=ForwardedTable)

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
        """Close the disk stores."""
        for table_store in self.stores.values():
            table_store.store.close()


def open_state_tables(
    kind: str,
    state_dir: Path,
    topics: dict[str, tuple[str, int]],
    cluster_id: str | None,
    tuning: StoreTuning,
) -> StateTables:
    """The consent and sign-up tables (and the forwarded table) on the configured store.

    `topics` maps "consent", "signup_status" (and "forwarded", when notices are on) to
    (topic name, partition count).
    """
    if kind == "memory":
        return StateTables(ConsentTable(), SignupStatusTable())
    consent_topic, consent_partitions = topics["consent"]
    status_topic, status_partitions = topics["signup_status"]
    consent = open_table_store(state_dir / "consent", consent_topic, consent_partitions, cluster_id, tuning)
    status = open_table_store(
        state_dir / "signup-status", status_topic, status_partitions, cluster_id, tuning
    )
    names = consent.store.jurisdictions()
    consent.jurisdictions_saved = len(names)
    stores = {"consent": consent, "signup_status": status}
    forwarded = ForwardedTable()
    if "forwarded" in topics:
        forwarded_topic, forwarded_partitions = topics["forwarded"]
        stores["forwarded"] = open_table_store(
            state_dir / "forwarded",
            forwarded_topic,
            forwarded_partitions,
            cluster_id,
            tuning,
            RocksBytesStore,
        )
        forwarded = ForwardedTable(stores["forwarded"].store)  # type: ignore[arg-type]
    return StateTables(
        ConsentTable(consent.store, jurisdictions=names), SignupStatusTable(status.store), stores, forwarded
    )


def state_topic_layout(
    kafka_config: dict[str, Any], topics: list[str], timeout_s: float = 10.0
) -> tuple[str | None, dict[str, int]]:
    """The cluster id and the partition count of each state topic (what a checkpoint is valid for)."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka_config).list_topics(timeout=timeout_s)
    counts = {t: len(metadata.topics[t].partitions) for t in topics if t in metadata.topics}
    return metadata.cluster_id, counts


def open_configured_tables(
    settings: Any, kafka_config: dict[str, Any], forwarded: bool = False
) -> StateTables:
    """The state tables the settings ask for (`state_store`, `state_dir`, tuning); with
    `forwarded`, the forwarded table too (opt-out notices on)."""
    if settings.state_store == "memory":
        return StateTables(ConsentTable(), SignupStatusTable())
    topics = [settings.consent_topic, settings.signup_status_topic]
    if forwarded:
        topics.append(settings.forwarded_topic)
    cluster_id, counts = state_topic_layout(kafka_config, topics)
    named = {
        "consent": (settings.consent_topic, counts.get(settings.consent_topic, 0)),
        "signup_status": (settings.signup_status_topic, counts.get(settings.signup_status_topic, 0)),
    }
    if forwarded:
        named["forwarded"] = (settings.forwarded_topic, counts.get(settings.forwarded_topic, 0))
    return open_state_tables(
        settings.state_store,
        Path(settings.state_dir),
        named,
        cluster_id,
        StoreTuning(
            settings.state_cache_entries, settings.state_block_cache_mb, settings.state_write_buffer_mb
        ),
    )


def report_store_metrics(tables: StateTables, metrics: Any, now: float) -> None:
    """Disk bytes and checkpoint age per table (nothing for the memory store)."""
    for name, table_store in tables.stores.items():
        metrics.state_store_bytes.labels(name).set(table_store.store.disk_bytes())
        if table_store.checkpointed_at is not None:
            metrics.state_checkpoint_age.labels(name).set(max(0.0, now - table_store.checkpointed_at))
