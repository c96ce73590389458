"""The scenarios both engines' tests run, and the checks they share.

`tests/integration/test_job.py` runs them on the kafka engine and `test_faust.py` on the Faust
engine (`engine="faust"` in the guard options): conservation per input (`outcomes`), a SIGKILL
and a restart (`sigkill_and_restart`), a SIGTERM and a restart (`sigterm_and_restart`).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from streams.broker.embedded import EmbeddedBroker
from streams.core.codec import decode_json
from streams.core.identifiers import pseudonym
from streams.core.models import Event
from streams.gen.traffic import KeyedRecord, TrafficGenerator
from streams.runtime.kafka.topics import ensure_topics
from tests.integration import kafka_helpers
from tests.integration.kafka_helpers import PARTNERS, GuardProcess, produce, read_blocked, start_guard

INPUT = "internal.events"
STATE_TOPICS = ["privacy.consent", "member.signup-status"]
PARTNER_KEYS = {
    "install-attribution": kafka_helpers.KEY_ENV["PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION"].encode(),
    "signup-conversions": kafka_helpers.KEY_ENV["PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS"].encode(),
}
FORBIDDEN = re.compile(
    r"acct-\d|prof-\d|dev-[0-9a-f]|@|example\.com|https?:|/title/|stranger things|squid game|the crown"
    r"|\b203\.0\.\d{1,3}\.(?!0\b)\d{1,3}\b|650 555|watch_history|search_query|title_id",
    re.IGNORECASE,
)


def prepare(broker: EmbeddedBroker, population: int = 2000, seed: int = 5) -> TrafficGenerator:
    """Create the input and state topics and seed the state of a generated population."""
    return kafka_helpers.seed_population(broker.bootstrap, INPUT, population, seed)


def wait_consumed(guard: GuardProcess, count: int, timeout_s: float = 240.0) -> None:
    """Wait until the guard counted `count` records in (its committed metrics); fail if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if guard.metric_value("partner_guard_records_in_total") >= count:
            return
        if guard.process.poll() is not None:
            raise AssertionError(f"guard died: {guard.log()}")
        time.sleep(0.25)
    raise AssertionError(f"guard consumed {guard.metric_value('partner_guard_records_in_total')} of {count}")


def event_ids(records: list[KeyedRecord]) -> list[str | None]:
    """The event id of each valid input; None for malformed inputs (blocked by offset)."""
    decoded = (decode_json(record.value) for record in records)
    return [d.event_id if isinstance(d, Event) else None for d in decoded]


def outcomes(broker: EmbeddedBroker, inputs: list[KeyedRecord]) -> dict[str, Counter[str]]:
    """Per partner: how often each input (by source offset-free identity) was forwarded or blocked."""
    ids = [i for i in event_ids(inputs) if isinstance(i, str)]
    found: dict[str, Counter[str]] = {p: Counter() for p in PARTNERS}
    for partner in PARTNERS:
        by_pseudonym = {pseudonym(PARTNER_KEYS[partner], "event_id", i): i for i in ids}
        for _, value, _ in kafka_helpers.read_topic(broker.bootstrap, f"partner.{partner}.events"):
            record = orjson.loads(value or b"{}")
            found[partner][by_pseudonym[record["event_id"]]] += 1
    for blocked in read_blocked(broker.bootstrap):
        source = blocked["source"]
        found[blocked["partner"]][
            blocked["event_id"] or f"offset:{source['partition']}:{source['offset']}"
        ] += 1
    return found


def interrupt_and_restart(
    broker: EmbeddedBroker,
    tmp_path: Path,
    group: str,
    events: list[KeyedRecord],
    after: int,
    interrupt: Callable[[GuardProcess], None],
    **guard_options: Any,
) -> dict[str, Counter[str]]:
    """Start a guard, produce `events`, `interrupt` it once `after` of them are consumed, start it
    again and wait until every input is committed; returns `outcomes` (the outputs per input)."""
    first = start_guard(broker.bootstrap, tmp_path, INPUT, group, **guard_options)
    first.wait_ready()
    produce(broker.bootstrap, INPUT, events)
    wait_consumed(first, after)
    interrupt(first)
    second = start_guard(broker.bootstrap, tmp_path, INPUT, group, **guard_options)
    try:
        second.wait_ready()
        kafka_helpers.wait_all_committed(broker.bootstrap, group, INPUT, len(events), guards=[second])
        return outcomes(broker, events)
    finally:
        assert second.stop() == 0


def sigkill_and_restart(
    broker: EmbeddedBroker, tmp_path: Path, events: list[KeyedRecord], kill_after: int, **guard_options: Any
) -> None:
    """SIGKILL the guard once `kill_after` inputs are consumed, restart it: every input has its outputs.

    Shared by both engines' tests; duplicates are printed (the embedded broker does not hide
    aborted transactions, and the Faust engine runs at least once).
    """

    def kill(guard: GuardProcess) -> None:
        os.kill(guard.process.pid, signal.SIGKILL)
        guard.process.wait()

    seen_by_partner = interrupt_and_restart(
        broker, tmp_path, "kill", events, kill_after, kill, **guard_options
    )
    ids = event_ids(events)
    malformed = sum(1 for i in ids if i is None)
    for partner in PARTNERS:
        seen = seen_by_partner[partner]
        missing = [i for i in ids if i is not None and seen[i] == 0]
        assert not missing, (partner, len(missing))
        assert sum(1 for key in seen if key.startswith("offset:")) == malformed
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        print(
            f"{partner}: {duplicates} duplicate outputs of {len(events)} inputs "
            f"after SIGKILL ({guard_options})"
        )


def sigterm_and_restart(
    broker: EmbeddedBroker,
    tmp_path: Path,
    events: list[KeyedRecord],
    stop_after: int,
    stop_timeout_s: float = 60.0,
    stop_signal: int = signal.SIGTERM,
    **guard_options: Any,
) -> float:
    """SIGTERM (or `stop_signal`) the guard once `stop_after` inputs are consumed (exit 0), restart
    it: every input has exactly one output per partner, so the first instance committed all it wrote.

    Shared by both engines' tests; returns how long the first instance took to stop (SIGKILL,
    and a failure, after `stop_timeout_s`).
    """
    stopped_in_s: list[float] = []

    def stop(guard: GuardProcess) -> None:
        started = time.monotonic()
        assert guard.stop(stop_timeout_s, stop_signal) == 0, guard.log()
        stopped_in_s.append(time.monotonic() - started)

    seen_by_partner = interrupt_and_restart(
        broker, tmp_path, "term", events, stop_after, stop, **guard_options
    )
    for partner in PARTNERS:  # every input exactly once: the first instance committed all it wrote
        assert sum(seen_by_partner[partner].values()) == len(events), partner
        assert max(seen_by_partner[partner].values()) == 1, partner
    return stopped_in_s[0]


def seed_lagging_account(bootstrap: str) -> None:
    """Create the topics and grant consent to account `lag-1`, whose installs `lagging_installs` are."""
    ensure_topics({"bootstrap.servers": bootstrap}, [INPUT], STATE_TOPICS, 3)
    grant = {"subject": "account:lag-1", "interest_based_ads": "granted"}
    produce(bootstrap, "privacy.consent", [KeyedRecord(b"account:lag-1", orjson.dumps(grant))])


def lagging_installs(count: int) -> list[KeyedRecord]:
    """App installs of account `lag-1` (event ids `lag-<i>`), which the attribution partner may receive."""
    install = {
        "event_type": "app_install",
        "event_time": 1,
        "account_id": "lag-1",
        "device": {"platform": "ios"},
        "context": {"country": "US"},
    }
    return [KeyedRecord(b"lag-1", orjson.dumps(install | {"event_id": f"lag-{i}"})) for i in range(count)]


def assert_blocked_as_stale(bootstrap: str, events: list[KeyedRecord]) -> None:
    """Decided while the state was behind: some installs blocked as `consent_stale` (with a stale
    snapshot), and every install either forwarded or blocked for the attribution partner."""
    blocked = read_blocked(bootstrap)
    mine = [b for b in blocked if b["partner"] == "install-attribution"]
    stale = [b for b in mine if "consent_stale" in b["reasons"]]
    assert stale, "the state was behind, yet nothing was blocked as consent_stale"
    assert all(b["snapshot"]["stale"] for b in stale)
    forwarded = kafka_helpers.read_topic(bootstrap, "partner.install-attribution.events")
    assert len(forwarded) + len(mine) == len(events)
