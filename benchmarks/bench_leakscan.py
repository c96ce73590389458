"""Leak-scan cost per forwarded record on a realistic mix, and on the worst shapes found.

Usage: `python benchmarks/bench_leakscan.py [EVENTS]`. Prints, in CPU time (best of several
runs, so other processes on the machine matter less): µs per forwarded record for the scan
(warm memo, the steady state; and cold, memo cleared before each record), for collecting
the event's own values and identifier spellings, the scan's share of `decide` per event,
and the time for the longest hostile values the scan reads.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.core.codec import decode_json
from streams.core.decide import decide, sensitive_values
from streams.core.leakscan import MAX_SCANNED_CHARS
from streams.core.models import Event
from streams.core.rules.loader import load_ruleset
from streams.gen.traffic import TrafficGenerator
from streams.runtime.state import ConsentTable, SignupStatusTable, snapshot_for

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = {  # the longest values the scan reads (MAX_SCANNED_CHARS); longer ones are refused unread
    "email-shaped": "@" + "a" * (MAX_SCANNED_CHARS - 1),
    "ipv6-shaped": "1:" * (MAX_SCANNED_CHARS // 2),
    "digits and dots": "1." * (MAX_SCANNED_CHARS // 2),
    "domain-shaped": "a." * (MAX_SCANNED_CHARS // 2),
    "words": "word-" * (MAX_SCANNED_CHARS // 5),
    "percent-encoded": "%25" * (MAX_SCANNED_CHARS // 3),
    "non-ASCII digits": "\u0666" * MAX_SCANNED_CHARS,
}


def _best_of(runs: int, work: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def main(count: int = 50_000) -> None:
    """Run the benchmark and print the figures."""
    ruleset = load_ruleset(ROOT / "rules").with_keys(
        {"install-attribution": b"a" * 32, "signup-conversions": b"b" * 32}
    )
    generator = TrafficGenerator(seed=11, population=5_000)
    consent, status = ConsentTable(), SignupStatusTable()
    for keyed in generator.consent_records():
        consent.apply(keyed.key or b"", keyed.value)
    for keyed in generator.signup_statuses():
        status.apply(keyed.key or b"", keyed.value)
    forwarded: list[tuple[Event, dict[str, Any]]] = []
    decided = []
    for keyed in generator.events(count):
        record = decode_json(keyed.value or b"")
        snapshot = snapshot_for(record, consent, status, False)
        decided.append((record, snapshot))
        for decision in decide(record, snapshot, ruleset):
            if decision.forwarded and isinstance(record, Event):
                forwarded.append((record, decision.record or {}))
    scanner = ruleset.leak_scanner
    spellings = [sensitive_values(event, ruleset.tags) | scanner.spellings(event) for event, _ in forwarded]

    def warm() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.scan(record, raw)

    def cold() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.clear_memo()
            scanner.scan(record, raw)

    def collect() -> None:
        for event, _ in forwarded:
            sensitive_values(event, ruleset.tags) | scanner.spellings(event)

    def decide_all() -> None:
        for record, snapshot in decided:
            decide(record, snapshot, ruleset)

    n = len(forwarded)
    scan, own = _best_of(5, warm), _best_of(5, collect)
    whole = _best_of(3, decide_all)
    print(f"events: {count}, forwarded records: {n}")
    print(f"scan, warm memo           {scan / n * 1e6:8.2f} µs/record")
    print(f"scan, cold memo           {_best_of(3, cold) / n * 1e6:8.2f} µs/record")
    print(f"own values and spellings  {own / n * 1e6:8.2f} µs/record")
    print(f"decide                    {whole / count * 1e6:8.2f} µs/event")
    print(f"ratio scan + own values / decide: {(scan + own) / whole:.1%} of decide's cost")
    for name, text in HOSTILE.items():

        def hostile(text: str = text) -> None:
            scanner.clear_memo()
            scanner.scan({"campaign_id": text})

        print(f"hostile {name:18s} {len(text):5d} chars {_best_of(3, hostile) * 1e6:9.1f} µs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
