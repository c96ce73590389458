"""Flaky network between the guard and the broker: latency, connections cut mid-request, and a
black-hole longer than the session timeout. The guard recovers by itself; nothing is lost, and
a revocation produced during the black-hole is honoured for the events after it.

A transactional call that librdkafka never returns from (librdkafka#5456, seen here when a cut
lands inside `send_offsets_to_transaction`) ends the guard with exit code 4 once it is 10 s
past its timeout (5 s here); the supervisor restarts it, as a liveness probe would.
Rounds: 1 in `make test`, 3 in `make reliability`, 5 in `make soak`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.integration import reliability
from tests.integration.kafka_helpers import read_blocked
from tests.integration.reliability import TIMEOUT_S, Scenario, Supervisor, consent_record, installs

pytestmark = pytest.mark.integration
ROUNDS = 5 if reliability.SOAK else 3 if reliability.LONG else 1
BLACKHOLE_S = 10.0  # longer than the guard's 6 s session timeout


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[Scenario, FaultProxy]]:
    """The scenario on a fresh broker that advertises a fault proxy aimed at the guard's client.id."""
    with reliability.proxied_scenario(tmp_path, "flaky", 500, 47) as pair:
        yield pair


@pytest.mark.timeout(TIMEOUT_S)
def test_guard_recovers_from_latency_cuts_and_a_blackhole(flaky: tuple[Scenario, FaultProxy]) -> None:
    scenario, proxy = flaky
    grant = consent_record("flaky-revoked", "granted", "2026-11-01T00:00:00Z")
    revoke = consent_record("flaky-revoked", "denied", "2026-11-02T00:00:00Z")
    scenario.produce("privacy.consent", [grant])
    send, generate = scenario.send, scenario.generate

    env = reliability.guard_env(PARTNER_GUARD_TRANSACTION_CALL_TIMEOUT_MS="5000")
    supervisor = Supervisor(lambda: scenario.start(env, transactional_id="flaky-0"))
    try:
        supervisor.guard.wait_ready()
        send(generate(2000))
        for round_ in range(ROUNDS):
            proxy.set_latency(0.15)
            send(generate(2000))
            time.sleep(3)
            proxy.set_latency(0.0)
            for _ in range(3):
                proxy.cut()
                send(generate(1000))
                time.sleep(1)
            proxy.blackhole(True)
            send(generate(1000))
            if round_ == 0:
                scenario.produce("privacy.consent", [revoke])  # acknowledged during the fault
                send(installs("flaky-revoked", 50, "flaky-after-revoke"))
            time.sleep(BLACKHOLE_S)
            proxy.blackhole(False)
            send(generate(1000))
        scenario.wait_all_committed(600)
        assert supervisor.guard.status("/healthz") == 200
        print(f"\nproxy: {proxy.stats}")
        print(f"restarts by the supervisor: {supervisor.restarts or 'none, recovered in-process'}")
    finally:
        assert supervisor.stop() == 0
    assert proxy.stats.cut >= 3 and proxy.stats.bytes_discarded > 0
    # the black-hole's connections were reset when it ended, unless the guard had already
    # ended them itself: exit 4 on a call hung in the black-hole, then a supervisor restart
    assert proxy.stats.reset_after_blackhole >= 1 or supervisor.restarts, proxy.stats

    scenario.conclude(
        "flaky network",
        scenario.seeded.allowed(scenario.events, [grant, revoke]),
        f"{ROUNDS} round(s): 150 ms latency, 3 cuts mid-request, {BLACKHOLE_S:.0f} s black-hole",
        f"restarts by the supervisor: {supervisor.restarts or 'none'}",
    )
    revoked = [
        b
        for b in read_blocked(scenario.bootstrap)
        if b["partner"] == "install-attribution" and str(b["event_id"]).startswith("flaky-after-revoke")
    ]
    assert len({b["event_id"] for b in revoked}) == 50  # honoured for every install after it
    assert all("consent_interest_based_ads_denied" in b["reasons"] for b in revoked), revoked[:1]
