"""Crash loop: SIGKILL at random moments (once while the state is still loading), restart each
time; an exception injected between produce and commit; a commit that hangs for good.
Nothing lost, nothing leaked.

Sizes: `make test` 20,000 records and 3 kills + 1 while loading; `make reliability` 100,000
and 10 + 1; `make soak` 500,000 and 30 + 1 (PARTNER_GUARD_RELIABILITY)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from streams.runtime.kafka.calls import EXIT_TRANSACTION_HUNG
from tests.integration.kafka_helpers import GuardProcess, read_topic
from tests.integration.reliability import LONG, SOAK, TIMEOUT_S, Scenario, conclude, guard_env

pytestmark = pytest.mark.integration
RECORDS = 500_000 if SOAK else 100_000 if LONG else 20_000
KILLS = 30 if SOAK else 10 if LONG else 3  # at random moments, plus one while the state loads
# Unrelated subjects: loading the state takes long enough to kill the guard mid-way.
FILLER_CONSENT = 150_000 if LONG else 50_000


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


def _kill_points(rng: random.Random, total: int, kills: int) -> list[int]:
    """Where in the stream each kill lands (records committed): random, and all well before the
    end, so every kill interrupts work whatever the machine's speed. (The kill itself then waits
    a random fraction of a second more, so it lands anywhere in a batch, not just after a commit.)"""
    return sorted(rng.randrange(total // 20, total * 3 // 5) for _ in range(kills))


def _wait_progress(guard: GuardProcess, committed_before: int, point: int, timeout_s: float = 300.0) -> None:
    """Wait until the guard has committed a batch and the stream's committed total reaches `point`."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = guard.metric_value("partner_guard_records_in_total")
        if done > 0 and committed_before + done >= point:
            return
        assert time.monotonic() < deadline and guard.process.poll() is None, guard.log()
        time.sleep(0.02)


def _linger(guard: GuardProcess, committed_before: int, seconds: float, stop_at: int) -> None:
    """Let the guard work `seconds` more, cut short once the stream's committed total reaches `stop_at`.

    The random extra time lands a kill anywhere in a batch; the cap keeps a fast machine from
    finishing the whole stream before the kill (then the next cycle would have nothing to do).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if committed_before + guard.metric_value("partner_guard_records_in_total") >= stop_at:
            return
        time.sleep(0.02)


def _kill_while_loading(scenario: Scenario) -> None:
    """Start a guard and SIGKILL it after its HTTP port is up but before the state is loaded."""
    for _ in range(5):
        guard = scenario.start()
        while guard.status("/healthz") == 0 and guard.process.poll() is None:
            time.sleep(0.02)
        _kill(guard)
        if "state loaded" not in guard.log():  # (stderr is line-buffered: the log is as of the kill)
            return
    raise AssertionError("never caught the guard while it loaded its state")


@pytest.mark.timeout(TIMEOUT_S)
def test_crash_loop_sigkill_at_random_moments(broker: EmbeddedBroker, tmp_path: Path) -> None:
    phases = [("start", time.monotonic())]
    scenario = Scenario.seed(broker.bootstrap, tmp_path, "crash-loop", 2000, 41)
    filler = _filler()
    scenario.produce("privacy.consent", filler)
    scenario.send(scenario.generate(RECORDS))
    events, rng = scenario.events, random.Random(14)
    reference = ThreadPoolExecutor(1)  # the core's own decisions, worked out while the guard runs
    allowed_later = reference.submit(scenario.seeded.allowed, events, filler)
    phases.append(("produce", time.monotonic()))

    _kill_while_loading(scenario)
    phases.append(("kill while loading", time.monotonic()))
    progress = []
    for point in _kill_points(rng, len(events), KILLS):
        before = scenario.committed()
        guard = scenario.start()
        guard.wait_ready(120)
        started = time.monotonic()
        _wait_progress(guard, before, point)
        _linger(guard, before, rng.uniform(0.0, 0.5), stop_at=len(events) * 3 // 4)
        _kill(guard)
        progress.append(scenario.committed())
        print(f"cycle: {time.monotonic() - started:.1f}s from ready to kill; committed {progress[-1]}")
    assert progress[-1] < len(events), "the kills came too late: all was committed before the last one"
    phases.append(("kills", time.monotonic()))
    last = scenario.start()
    try:
        last.wait_ready(120)
        scenario.wait_all_committed(timeout_s=600)
    finally:
        assert last.stop() == 0
    print(f"\ncommitted after each of the {KILLS} kills: {progress}")
    phases.append(("last guard to the end", time.monotonic()))

    allowed = allowed_later.result()
    reference.shutdown()
    phases.append(("reference decisions (rest)", time.monotonic()))
    ledger = scenario.account("crash loop", allowed)
    phases.append(("ledger", time.monotonic()))
    print("phases: " + ", ".join(f"{n} {t - b:.1f}s" for (_, b), (n, t) in itertools.pairwise(phases)))
    conclude(ledger, f"{KILLS + 1} SIGKILLs (1 while loading state), restarted each time")


@pytest.mark.timeout(TIMEOUT_S)
def test_exception_before_commit_leaves_offsets_and_the_batch_is_redone(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    scenario = Scenario.seed(broker.bootstrap, tmp_path, "injected", 500, 43)
    env = guard_env(PARTNER_GUARD_BATCH_SIZE="200", PARTNER_GUARD_FAULT_BEFORE_COMMIT="raise@5")
    scenario.send(scenario.generate(6000))
    guard = scenario.start(env)
    assert guard.process.wait(timeout=180) != 0  # an unexpected exception stops the job
    assert "InjectedFaultError" in guard.log()

    committed = scenario.committed_offsets()
    assert 0 < sum(committed.values()) <= 4 * 200  # four batches committed, the fifth did not move them
    before = len(read_topic(broker.bootstrap, "guard.blocked"))
    print(f"\ncommitted {committed}; {before} blocked outputs readable after the failure")

    again = scenario.start()
    try:
        again.wait_ready()
        scenario.wait_all_committed()
    finally:
        assert again.stop() == 0
    ledger = scenario.conclude("exception before commit", scenario.seeded.allowed(scenario.events))
    for partner, duplicates in ledger.duplicated.items():  # the failed batch, and only it, was redone
        assert 0 < duplicates <= 200, partner


@pytest.mark.timeout(TIMEOUT_S)
def test_a_hung_commit_exits_4_and_the_restart_redoes_the_batch(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Before: a send_offsets_to_transaction that never returned (librdkafka#5456) froze the loop
    until a liveness probe noticed the silent /healthz, 60 s later."""
    scenario = Scenario.seed(broker.bootstrap, tmp_path, "hung", 500, 45)
    env = guard_env(
        PARTNER_GUARD_BATCH_SIZE="200",
        PARTNER_GUARD_FAULT_BEFORE_COMMIT="hang@3",
        PARTNER_GUARD_TRANSACTION_CALL_TIMEOUT_MS="2000",  # hung = still blocked 2 s + 10 s later
    )
    scenario.send(scenario.generate(4000))
    guard = scenario.start(env)
    assert guard.process.wait(timeout=300) == EXIT_TRANSACTION_HUNG, guard.log()
    assert "still blocked" in guard.log()
    # batches 1-2 committed, the hung third did not move the input offsets (the first batches may
    # be the consent changes the guard also consumes for opt-out notices: then 0 inputs so far)
    assert scenario.committed() <= 2 * 200

    again = scenario.start()
    try:
        again.wait_ready()
        scenario.wait_all_committed(guards=[again])
    finally:
        assert again.stop() == 0
    ledger = scenario.conclude(
        "hung commit",
        scenario.seeded.allowed(scenario.events),
        "hang@3: send_offsets_to_transaction blocks for good; exit 4, restart",
    )
    for partner, duplicates in ledger.duplicated.items():  # only the hung batch was redone
        assert duplicates <= 200, partner
