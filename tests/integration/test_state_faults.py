"""State faults while events flow: a consent record nobody can read (counted, fail-closed for
its subject, the job carries on), then the state topics unreachable (every decision that needs
state blocks as `consent_stale`) and back (normal decisions resume)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.gen.traffic import KeyedRecord
from tests.faultproxy import FaultProxy
from tests.integration import reliability
from tests.integration.kafka_helpers import GuardProcess, read_blocked
from tests.integration.reliability import TIMEOUT_S, Scenario, conclude, consent_record, installs

pytestmark = pytest.mark.integration
UNREACHABLE_S = 10.0


@pytest.fixture
def state_proxied(tmp_path: Path) -> Iterator[tuple[Scenario, FaultProxy]]:
    """The scenario on a fresh broker behind a proxy aimed only at the guard's state-reader clients."""
    client_id = f"{reliability.GUARD_CLIENT_ID}-state"
    with reliability.proxied_scenario(tmp_path, "state-faults", 500, 59, client_id) as pair:
        yield pair


def _wait_metric(
    guard: GuardProcess, name: str, at_least: float, timeout_s: float = 60.0, **labels: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while guard.metric_value(name, **labels) < at_least:
        assert time.monotonic() < deadline, (name, guard.metric_value(name, **labels))
        time.sleep(0.25)


def _install_outcomes(views: list[dict[str, Any]], prefix: str) -> tuple[int, Counter[str]]:
    """For the attribution partner: how many of the `prefix` installs were blocked, by reason."""
    blocked = [
        b for b in views if b["partner"] == "install-attribution" and str(b["event_id"]).startswith(prefix)
    ]
    return len(blocked), Counter(r for b in blocked for r in b["reasons"])


@pytest.mark.timeout(TIMEOUT_S)
def test_unreadable_state_record_then_state_unreachable(state_proxied: tuple[Scenario, FaultProxy]) -> None:
    scenario, proxy = state_proxied
    extra_consent = [
        consent_record("state-garbled", "granted", "2026-11-01T00:00:00Z"),
        consent_record("state-fine", "granted", "2026-11-01T00:00:00Z"),
    ]
    scenario.produce("privacy.consent", extra_consent)
    send, generate = scenario.send, scenario.generate

    marks = [("start", time.monotonic())]
    guard = scenario.start(transactional_id="state-0")
    try:
        guard.wait_ready()
        marks.append(("ready", time.monotonic()))
        send([*generate(2000), *installs("state-fine", 20, "fine-before")])

        garbled = KeyedRecord(b"account:state-garbled", b"\xff{not json")  # mid-stream, unreadable
        scenario.produce("privacy.consent", [garbled])
        extra_consent.append(garbled)
        send([*installs("state-garbled", 20, "garbled-after"), *generate(2000)])
        scenario.wait_all_committed(guards=[guard])
        _wait_metric(guard, "partner_guard_state_invalid_records_total", 1, topic="privacy.consent")
        marks.append(("unreadable record", time.monotonic()))

        proxy.blackhole(True)  # the state topics become unreachable; the input stays reachable
        send([*installs("state-fine", 20, "fine-during"), *generate(1000)])
        time.sleep(UNREACHABLE_S)
        scenario.wait_all_committed(guards=[guard])
        marks.append(("unreachable", time.monotonic()))
        proxy.blackhole(False)
        time.sleep(2)  # the state reader reconnects by itself
        send([*installs("state-fine", 20, "fine-after"), *generate(1000)])
        scenario.wait_all_committed(guards=[guard])
        assert guard.process.poll() is None and guard.status("/healthz") == 200
        marks.append(("back", time.monotonic()))
    finally:
        assert guard.stop() == 0

    views = read_blocked(scenario.bootstrap)
    garbled_blocked, garbled_reasons = _install_outcomes(views, "garbled-after")
    assert garbled_blocked == 20, garbled_reasons  # fail closed for that subject only
    during_blocked, during_reasons = _install_outcomes(views, "fine-during")
    assert during_blocked == 20 and during_reasons["consent_stale"] == 20, during_reasons
    for phase in ("fine-before", "fine-after"):  # normal decisions before the fault and after it
        blocked, reasons = _install_outcomes(views, phase)
        assert blocked == 0, (phase, reasons)
    print(f"\nproxy: {proxy.stats}")

    ledger = scenario.account("state faults", scenario.seeded.allowed(scenario.events, extra_consent))
    marks.append(("ledger", time.monotonic()))
    print("phases: " + ", ".join(f"{n} {t - b:.1f}s" for (_, b), (n, t) in itertools.pairwise(marks)))
    conclude(ledger, f"unreadable consent record mid-stream; state topics unreachable {UNREACHABLE_S:.0f} s")
