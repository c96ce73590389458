"""Zombie: an instance frozen (SIGSTOP) with an open transaction, past its session timeout and
`max.poll.interval.ms`, while another instance takes its partitions; then resumed. It must not
commit its stale work, and every input is still accounted for."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from streams.broker.embedded import EmbeddedBroker
from tests.integration.kafka_helpers import GuardProcess, produce, start_guard
from tests.integration.reliability import (
    TIMEOUT_S,
    account,
    committed_offsets,
    guard_env,
    seed_state,
    wait_all_committed,
)

pytestmark = pytest.mark.integration
INPUT = "internal.events"
GROUP = "zombie"


class OffsetWatch(threading.Thread):
    """Samples the group's committed offsets and remembers any that moved backwards."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.highest: dict[int, int] = {}
        self.regressions: list[tuple[int, int, int]] = []
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for partition, offset in committed_offsets(self.bootstrap, GROUP, INPUT).items():
                if offset < self.highest.get(partition, 0):
                    self.regressions.append((partition, self.highest[partition], offset))
                self.highest[partition] = max(offset, self.highest.get(partition, 0))
            self.samples += 1
            time.sleep(0.2)


def _wait_stopped(guard: GuardProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while psutil.Process(guard.process.pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline and guard.process.poll() is None, f"never froze: {guard.log()}"
        time.sleep(0.05)


@pytest.mark.timeout(TIMEOUT_S)
def test_a_resumed_zombie_commits_nothing_stale(broker: EmbeddedBroker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    seeded = seed_state(bootstrap, INPUT, 500, 53)
    events = list(seeded.generator.events(8000))
    produce(bootstrap, INPUT, events[:4000])
    env = guard_env(
        PARTNER_GUARD_KAFKA_MAX_POLL_INTERVAL_MS="7000",
        PARTNER_GUARD_KAFKA_SESSION_TIMEOUT_MS="6000",  # state reader too (<= max poll interval)
        PARTNER_GUARD_BATCH_SIZE="500",
    )
    zombie = start_guard(
        bootstrap, tmp_path, INPUT, GROUP, {**env, "PARTNER_GUARD_FAULT_BEFORE_COMMIT": "stop@3"}, "zombie-a"
    )
    watch = OffsetWatch(bootstrap)
    survivor = None
    try:
        _wait_stopped(zombie)  # frozen after producing batch 3, before committing it
        frozen_at = dict(committed_offsets(bootstrap, GROUP, INPUT))
        watch.start()
        survivor = start_guard(bootstrap, tmp_path, INPUT, GROUP, env, "zombie-b")
        survivor.wait_ready()
        produce(bootstrap, INPUT, events[4000:6000])
        wait_all_committed(
            bootstrap, GROUP, INPUT, 6000, guards=[survivor]
        )  # the survivor took every partition
        os.kill(zombie.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while "injected fault" in zombie.log() and time.monotonic() < deadline:
            if any(w in zombie.log() for w in ("aborting", "fatal", "revoked", "assigned")):
                break
            time.sleep(0.2)
        time.sleep(3)  # let the resumed zombie try to commit
        produce(bootstrap, INPUT, events[6000:])
        wait_all_committed(bootstrap, GROUP, INPUT, len(events))
        time.sleep(1)
    finally:
        watch.done.set()
        if watch.ident is not None:
            watch.join(10)
        for guard in (zombie, survivor):
            if guard is not None:
                os.kill(guard.process.pid, signal.SIGCONT) if guard.process.poll() is None else None
                guard.stop()
    print(f"\nfrozen with committed {frozen_at}; offsets sampled {watch.samples} times")
    print("zombie log tail:\n" + "\n".join(zombie.log().splitlines()[-8:]))
    assert watch.regressions == [], "a stale commit moved the group's offsets backwards"
    assert sum(committed_offsets(bootstrap, GROUP, INPUT).values()) == len(events)

    ledger = account(bootstrap, "zombie", events, seeded.allowed(events))
    ledger.notes.append("SIGSTOP before commit past session timeout and max.poll.interval.ms, then SIGCONT")
    ledger.report()
    ledger.assert_sound()
