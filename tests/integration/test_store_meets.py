"""Where the disk store meets the rest (embedded broker): `--workers`, and the topic it mirrors.

- `--workers 2` with `state_store: rocksdb`: every worker its own `<state_dir>/worker-<i>`; a
  second process pointed at a live store refuses to start and deletes nothing.
- A consent topic deleted and recreated under the same name (a restore, a migration, a
  mistake) holding a denial: the restarted guard rebuilds its store and blocks the subject.
- A checkpoint whose offsets were edited past the topic's end: rebuilt, never resumed.
(A topic changing under a running guard: test_state_reload.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from rocksdict import Rdict

from streams.broker.embedded import EmbeddedBroker
from streams.core.identifiers import pseudonym
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    KEY_ENV,
    ROOT,
    GuardProcess,
    produce,
    read_blocked,
    read_topic,
    start_guard,
)
from tests.integration.records import app_install, consent, keyed_event

pytestmark = pytest.mark.integration

INPUT = "internal.events"
CONSENT = "privacy.consent"
STATE_TOPICS = [CONSENT, "member.signup-status"]
FORWARDED_TO = "partner.install-attribution.events"
DENIED = "consent_interest_based_ads_denied"


def _consent(account: str, ads: str) -> KeyedRecord:
    return consent(account, ads, ad_cookies="granted", updated_at="2026-11-01T00:00:00Z")


def _install(account: str, suffix: str) -> KeyedRecord:
    return keyed_event(app_install(f"ev-{account}-{suffix}", account))


def _store_env(state_dir: Path) -> dict[str, str]:
    return {"PARTNER_GUARD_STATE_STORE": "rocksdb", "PARTNER_GUARD_STATE_DIR": str(state_dir)}


def _wait_records_in(guard: GuardProcess, count: int, timeout_s: float = 120.0) -> None:
    """Hang guard: until `count` inputs are counted (once committed: their outputs are readable)."""
    deadline = time.monotonic() + timeout_s
    while guard.metric_value("partner_guard_records_in_total") < count:
        assert guard.process.poll() is None, guard.log()
        assert time.monotonic() < deadline, f"guard did not consume its input: {guard.log()}"
        time.sleep(0.2)


def _install_outcome(broker: EmbeddedBroker, event_id: str) -> str | list[str]:
    """install-attribution's outcome for one event: "forward", the block reasons, or "missing"."""
    for blocked in read_blocked(broker.bootstrap):
        if blocked.get("partner") == "install-attribution" and blocked["event_id"] == event_id:
            return list(blocked["reasons"])
    wanted = pseudonym(KEY_ENV["PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION"].encode(), "event_id", event_id)
    for _, value, _ in read_topic(broker.bootstrap, FORWARDED_TO):
        if orjson.loads(value or b"{}").get("event_id") == wanted:
            return "forward"
    return "missing"


def test_workers_on_the_disk_store_each_get_their_own_and_a_live_store_is_never_taken(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [INPUT], STATE_TOPICS, 3)
    accounts = [f"wk-{i:03d}" for i in range(40)]
    produce(broker.bootstrap, CONSENT, [_consent(a, "granted") for a in accounts])
    produce(broker.bootstrap, CONSENT, [_consent(a, "denied") for a in accounts[:10]])
    state_dir = tmp_path / "state"
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        INPUT,
        "store-workers",
        {**_store_env(state_dir), "PARTNER_GUARD_WORKERS": "2"},
        transactional_id="store-workers",
    )
    try:
        guard.wait_ready(timeout_s=120)
        produce(broker.bootstrap, INPUT, [_install(a, "1") for a in accounts])
        _wait_records_in(guard, len(accounts))
        for index in (0, 1):
            assert (state_dir / f"worker-{index}" / "consent" / "CURRENT").exists(), index
            assert (
                guard.metric_value("partner_guard_state_rebuilds_total", worker=str(index), table="consent")
                == 1
            )
        assert "cannot be opened" not in guard.log()
        for account in accounts[:12]:  # both workers decide from a complete store
            expected = [DENIED] if account in accounts[:10] else "forward"
            assert _install_outcome(broker, f"ev-{account}-1") == expected, account

        # an operator points a second guard at worker 0's live store: refused, nothing deleted
        intruder = subprocess.run(
            [sys.executable, "-m", "streams", "run"],
            env={
                **KEY_ENV,
                "PATH": "/usr/bin:/bin",
                "PARTNER_GUARD_BOOTSTRAP_SERVERS": broker.bootstrap,
                "PARTNER_GUARD_INPUT_TOPICS": INPUT,
                "PARTNER_GUARD_GROUP_ID": "store-intruder",
                "PARTNER_GUARD_RULES_DIR": str(ROOT / "rules"),
                "PARTNER_GUARD_METRICS_PORT": "0",
                **_store_env(state_dir / "worker-0"),
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert intruder.returncode == 2, intruder.stderr[-3000:]
        assert "refusing to start: state_dir" in intruder.stderr
        assert "in use by another live process" in intruder.stderr
        assert (state_dir / "worker-0" / "consent" / "CURRENT").exists()

        produce(broker.bootstrap, INPUT, [_install(a, "2") for a in accounts])
        _wait_records_in(guard, 2 * len(accounts))  # both workers still alive and deciding
        assert guard.process.poll() is None
    finally:
        assert guard.stop(timeout_s=60) == 0, guard.log()


def test_a_consent_topic_recreated_under_the_same_name_rebuilds_the_store(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    ensure_topics({"bootstrap.servers": bootstrap}, [INPUT], STATE_TOPICS, 3)
    accounts = [f"rc-{i:03d}" for i in range(30)]
    produce(bootstrap, CONSENT, [_consent(a, "granted") for a in accounts])
    state_dir = tmp_path / "state"
    env = _store_env(state_dir)
    first = start_guard(bootstrap, tmp_path, INPUT, "recreate", env, transactional_id="recreate-0")
    first.wait_ready()
    produce(bootstrap, INPUT, [_install("rc-000", "1"), _install("rc-001", "1")])
    _wait_records_in(first, 2)
    assert _install_outcome(broker, "ev-rc-000-1") == "forward"
    assert first.stop() == 0, first.log()

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([CONSENT]).values():
        future.result()
    deadline = time.monotonic() + 30
    while CONSENT in admin.list_topics(timeout=10).topics:  # hang guard
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ensure_topics({"bootstrap.servers": bootstrap}, [], [CONSENT], 3)
    # the recreated topic's only record for rc-000 is a denial (rc-001: a grant, the control)
    produce(bootstrap, CONSENT, [_consent("rc-000", "denied"), _consent("rc-001", "granted")])

    second = start_guard(bootstrap, tmp_path, INPUT, "recreate", env, transactional_id="recreate-0")
    try:
        second.wait_ready()
        produce(bootstrap, INPUT, [_install("rc-000", "2"), _install("rc-001", "2"), _install("rc-002", "2")])
        _wait_records_in(second, 3)
        assert _install_outcome(broker, "ev-rc-000-2") == [DENIED]  # forwarded, were the store resumed
        assert _install_outcome(broker, "ev-rc-001-2") == "forward"
        # rc-002's grant lived only on the deleted topic: no consent now, fail closed
        assert _install_outcome(broker, "ev-rc-002-2") not in ("forward", "missing")
        assert second.metric_value("partner_guard_state_rebuilds_total", table="consent") == 1
        assert "rebuilding from topic privacy.consent" in second.log()
    finally:
        assert second.stop() == 0, second.log()


def test_a_checkpoint_edited_past_the_end_rebuilds(broker: EmbeddedBroker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    ensure_topics({"bootstrap.servers": bootstrap}, [INPUT], STATE_TOPICS, 3)
    produce(bootstrap, CONSENT, [_consent("ed-000", "granted")])
    state_dir = tmp_path / "state"
    env = _store_env(state_dir)
    first = start_guard(bootstrap, tmp_path, INPUT, "edited", env, transactional_id="edited-0")
    first.wait_ready()
    produce(bootstrap, INPUT, [_install("ed-000", "1")])
    _wait_records_in(first, 1)
    assert first.stop() == 0, first.log()

    db = Rdict(str(state_dir / "consent"))  # the operator's edit, guard stopped
    saved = orjson.loads(db[b"\x00offsets"] or b"{}")
    assert saved, "the first run checkpointed nothing"
    db[b"\x00offsets"] = orjson.dumps({partition: offset + 1000 for partition, offset in saved.items()})
    db.close()
    produce(bootstrap, CONSENT, [_consent("ed-000", "denied")])  # skipped, were the edit believed

    second = start_guard(bootstrap, tmp_path, INPUT, "edited", env, transactional_id="edited-0")
    try:
        second.wait_ready()
        produce(bootstrap, INPUT, [_install("ed-000", "2")])
        _wait_records_in(second, 1)
        assert _install_outcome(broker, "ev-ed-000-2") == [DENIED]
        assert "past its end" in second.log()
        assert second.metric_value("partner_guard_state_rebuilds_total", table="consent") == 1
    finally:
        assert second.stop() == 0, second.log()
