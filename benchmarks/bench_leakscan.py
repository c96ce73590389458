"""Leak-scan cost per forwarded record on a realistic mix, and on the worst shapes found.

Usage: `python benchmarks/bench_leakscan.py [EVENTS]`. Prints µs per forwarded record for the
scan alone (warm memo, the steady state) and cold (memo cleared before each record), the
cost of collecting the event's own identifier spellings, and µs for hostile long values.
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
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
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
    for keyed in generator.events(count):
        record = decode_json(keyed.value or b"")
        snapshot = snapshot_for(record, consent, status, False)
        for decision in decide(record, snapshot, ruleset):
            if decision.forwarded and isinstance(record, Event):
                forwarded.append((record, decision.record or {}))
    scanner = ruleset.leak_scanner
    spellings = [sensitive_values(event) | scanner.spellings(event) for event, _ in forwarded]

    def warm() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.scan(record, raw)

    def cold() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.clear_memo()
            scanner.scan(record, raw)

    def collect() -> None:
        for event, _ in forwarded:
            sensitive_values(event) | scanner.spellings(event)

    n = len(forwarded)
    print(f"events: {count}, forwarded records: {n}")
    print(f"scan, warm memo           {_best_of(3, warm) / n * 1e6:8.2f} µs/record")
    print(f"scan, cold memo           {_best_of(3, cold) / n * 1e6:8.2f} µs/record")
    print(f"own identifier spellings  {_best_of(3, collect) / n * 1e6:8.2f} µs/record")
    for name, text in HOSTILE.items():

        def hostile(text: str = text) -> None:
            scanner.clear_memo()
            scanner.scan({"campaign_id": text})

        print(f"hostile {name:18s} {len(text):5d} chars {_best_of(3, hostile) * 1e6:9.1f} µs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
