"""Crash loop: SIGKILL at random moments (once while the state is still loading), restart each
time; and an exception injected between produce and commit. Nothing lost, nothing leaked."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from tests.integration.kafka_helpers import GuardProcess, produce, read_topic, start_guard
from tests.integration.reliability import (
    SOAK,
    TIMEOUT_S,
    account,
    committed_offsets,
    guard_env,
    seed_state,
    wait_all_committed,
)

pytestmark = pytest.mark.integration
INPUT = "internal.events"
RECORDS = 500_000 if SOAK else 100_000
KILLS = 30 if SOAK else 10
FILLER_CONSENT = 150_000  # unrelated subjects: loading the state takes long enough to kill it mid-way


def _filler() -> list[KeyedRecord]:
    records = []
    for i in range(FILLER_CONSENT):
        subject = f"account:filler-{i}"
        value = {"subject": subject, "interest_based_ads": "granted", "updated_at": 1}
        records.append(KeyedRecord(subject.encode(), orjson.dumps(value)))
    return records


def _kill(guard: GuardProcess) -> None:
    os.kill(guard.process.pid, signal.SIGKILL)
    guard.process.wait()


def _wait_consuming(guard: GuardProcess, timeout_s: float = 120.0) -> None:
    """Wait until the guard has committed its first batch (it holds partitions and works)."""
    deadline = time.monotonic() + timeout_s
    while guard.metric_value("partner_guard_records_in_total") == 0:
        assert time.monotonic() < deadline, guard.log()
        time.sleep(0.05)


def _kill_while_loading(bootstrap: str, tmp_path: Path, group: str) -> None:
    """Start a guard and SIGKILL it after its HTTP port is up but before the state is loaded."""
    for _ in range(5):
        guard = start_guard(bootstrap, tmp_path, INPUT, group, guard_env(), transactional_id=group)
        while guard.status("/healthz") == 0 and guard.process.poll() is None:
            time.sleep(0.02)
        _kill(guard)
        if "state loaded" not in guard.log():  # (stderr is line-buffered: the log is as of the kill)
            return
    raise AssertionError("never caught the guard while it loaded its state")


@pytest.mark.timeout(TIMEOUT_S)
def test_crash_loop_sigkill_at_random_moments(broker: EmbeddedBroker, tmp_path: Path) -> None:
    seeded = seed_state(broker.bootstrap, INPUT, 2000, 41)
    filler = _filler()
    produce(broker.bootstrap, "privacy.consent", filler)
    events = list(seeded.generator.events(RECORDS))
    produce(broker.bootstrap, INPUT, events)
    group, rng = "crash-loop", random.Random(14)

    _kill_while_loading(broker.bootstrap, tmp_path, group)
    progress = []
    for _ in range(KILLS):
        guard = start_guard(broker.bootstrap, tmp_path, INPUT, group, guard_env(), transactional_id=group)
        guard.wait_ready(120)
        started = time.monotonic()
        _wait_consuming(guard)
        time.sleep(rng.uniform(0.0, 1.0))
        _kill(guard)
        progress.append(sum(committed_offsets(broker.bootstrap, group, INPUT).values()))
        print(f"cycle: {time.monotonic() - started:.1f}s to first commit + kill; committed {progress[-1]}")
    assert progress[-1] < len(events), "the kills came too late: all was committed before the last one"
    last = start_guard(broker.bootstrap, tmp_path, INPUT, group, guard_env(), transactional_id=group)
    try:
        last.wait_ready(120)
        wait_all_committed(broker.bootstrap, group, INPUT, len(events), timeout_s=600)
    finally:
        assert last.stop() == 0
    print(f"\ncommitted after each of the {KILLS} kills: {progress}")

    allowed = seeded.allowed(events, filler)
    ledger = account(broker.bootstrap, "crash loop", events, allowed)
    ledger.notes.append(f"{KILLS + 1} SIGKILLs (1 while loading state), restarted each time")
    ledger.report()
    ledger.assert_sound()


@pytest.mark.timeout(TIMEOUT_S)
def test_exception_before_commit_leaves_offsets_and_the_batch_is_redone(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    seeded = seed_state(broker.bootstrap, INPUT, 500, 43)
    events = list(seeded.generator.events(6000))
    group = "injected"
    env = guard_env(PARTNER_GUARD_BATCH_SIZE="200", PARTNER_GUARD_FAULT_BEFORE_COMMIT="raise@5")
    produce(broker.bootstrap, INPUT, events)
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, group, env, transactional_id=group)
    assert guard.process.wait(timeout=180) != 0  # an unexpected exception stops the job
    assert "InjectedFaultError" in guard.log()

    committed = committed_offsets(broker.bootstrap, group, INPUT)
    assert 0 < sum(committed.values()) <= 4 * 200  # four batches committed, the fifth did not move them
    before = len(read_topic(broker.bootstrap, "guard.blocked"))
    print(f"\ncommitted {committed}; {before} blocked outputs readable after the failure")

    again = start_guard(broker.bootstrap, tmp_path, INPUT, group, guard_env(), transactional_id=group)
    try:
        again.wait_ready()
        wait_all_committed(broker.bootstrap, group, INPUT, len(events))
    finally:
        assert again.stop() == 0
    allowed = seeded.allowed(events)
    ledger = account(broker.bootstrap, "exception before commit", events, allowed)
    ledger.report()
    ledger.assert_sound()
    for partner, duplicates in ledger.duplicated.items():  # the failed batch, and only it, was redone
        assert 0 < duplicates <= 200, partner
