"""Leak-scan cost per forwarded record on a realistic mix, and on the worst shapes found.

Usage: `python -m benchmarks.bench_leakscan [EVENTS]`. Prints, in CPU time (best of several
runs, so other processes on the machine matter less): µs per forwarded record for the scan
(warm memo, the steady state; and cold, memo cleared before each record), for collecting
the event's own values and identifier spellings, the scan's share of `decide` per event,
and the time for the longest hostile values the scan reads.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import best_of, population
from streams.core.codec import decode_json
from streams.core.decide import decide, sensitive_values
from streams.core.leakscan import MAX_SCANNED_CHARS
from streams.core.models import Event
from streams.runtime.state.tables import snapshot_for

HOSTILE = {  # the longest values the scan reads (MAX_SCANNED_CHARS); longer ones are refused unread
    "email-shaped": "@" + "a" * (MAX_SCANNED_CHARS - 1),
    "ipv6-shaped": "1:" * (MAX_SCANNED_CHARS // 2),
    "digits and dots": "1." * (MAX_SCANNED_CHARS // 2),
    "domain-shaped": "a." * (MAX_SCANNED_CHARS // 2),
    "words": "word-" * (MAX_SCANNED_CHARS // 5),
    "percent-encoded": "%25" * (MAX_SCANNED_CHARS // 3),
    "non-ASCII digits": "\u0666" * MAX_SCANNED_CHARS,
}


def main(count: int = 50_000) -> None:
    """Run the benchmark and print the figures."""
    mix = population(seed=11, size=5_000)
    ruleset, generator, consent, status = mix.ruleset, mix.generator, mix.consent, mix.signup_status
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
    spellings = [scanner.raw_values(event, sensitive_values(event, ruleset.tags)) for event, _ in forwarded]

    def warm() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.scan(record, raw)

    def cold() -> None:
        for (_, record), raw in zip(forwarded, spellings, strict=True):
            scanner.clear_memo()
            scanner.scan(record, raw)

    def collect() -> None:
        for event, _ in forwarded:
            scanner.raw_values(event, sensitive_values(event, ruleset.tags))

    def decide_all() -> None:
        for record, snapshot in decided:
            decide(record, snapshot, ruleset)

    n = len(forwarded)
    scan, own = best_of(5, warm), best_of(5, collect)
    whole = best_of(3, decide_all)
    print(f"events: {count}, forwarded records: {n}")
    print(f"scan, warm memo           {scan / n * 1e6:8.2f} µs/record")
    print(f"scan, cold memo           {best_of(3, cold) / n * 1e6:8.2f} µs/record")
    print(f"own values and spellings  {own / n * 1e6:8.2f} µs/record")
    print(f"decide                    {whole / count * 1e6:8.2f} µs/event")
    print(f"ratio scan + own values / decide: {(scan + own) / whole:.1%} of decide's cost")
    for name, text in HOSTILE.items():

        def hostile(text: str = text) -> None:
            scanner.clear_memo()
            scanner.scan({"campaign_id": text})

        print(f"hostile {name:18s} {len(text):5d} chars {best_of(3, hostile) * 1e6:9.1f} µs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
