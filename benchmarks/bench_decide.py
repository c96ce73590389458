"""Pure `decide` cost per event on a realistic mix, against a JSON strip baseline measured in
the same run. Usage: `python benchmarks/bench_decide.py [EVENTS]` (or `make bench`).

Prints CPU µs per event (process time: other load on a shared machine disturbs it least), µs
per (event, partner) pair, and the ratio to the baseline.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from streams.core.codec import decode_json, decode_json_gated
from streams.core.decide import decide, receivable_types
from streams.core.rules.loader import load_ruleset
from streams.gen.traffic import TrafficGenerator
from streams.runtime.state import ConsentTable, SignupStatusTable, snapshot_for

ROOT = Path(__file__).resolve().parents[1]
DROP = ("context", "user", "properties")


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
    raw = [e.value or b"" for e in generator.events(count)]

    decoded = [decode_json(r) for r in raw]
    snapshots = [snapshot_for(d, consent, status, False) for d in decoded]
    verdicts: Counter[str] = Counter()
    for event, snap in zip(decoded, snapshots, strict=True):
        for decision in decide(event, snap, ruleset):
            verdicts[decision.verdict] += 1

    def strip_baseline() -> None:
        for value in raw:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                for name in DROP:
                    obj.pop(name, None)
                orjson.dumps(obj)

    def decide_only() -> None:
        for record, snap in zip(decoded, snapshots, strict=True):
            decide(record, snap, ruleset)

    def decode_and_decide() -> None:
        for value, snap in zip(raw, snapshots, strict=True):
            decide(decode_json(value), snap, ruleset)

    receivable = receivable_types(ruleset)

    def gated_decode_and_decide() -> None:  # what `run` does: full validation only where it matters
        for value, snap in zip(raw, snapshots, strict=True):
            decide(decode_json_gated(value, receivable), snap, ruleset)

    baseline = _best_of(3, strip_baseline)
    pure = _best_of(3, decide_only)
    full = _best_of(3, decode_and_decide)
    gated = _best_of(3, gated_decode_and_decide)
    pairs = count * len(ruleset.partners)
    print(f"events: {count}, partners: {len(ruleset.partners)}, verdicts: {dict(verdicts)}")
    print(f"json strip baseline      {baseline / count * 1e6:7.2f} µs/event")
    print(f"decide (pre-decoded)     {pure / count * 1e6:7.2f} µs/event  {pure / pairs * 1e6:6.2f} µs/pair")
    print(f"decode + decide          {full / count * 1e6:7.2f} µs/event  {full / pairs * 1e6:6.2f} µs/pair")
    print(f"gated decode + decide    {gated / count * 1e6:7.2f} µs/event  {gated / pairs * 1e6:6.2f} µs/pair")
    print(f"ratio decode+decide / json strip: {full / baseline:.2f}x the baseline's cost")
    print(f"ratio gated decode+decide / json strip: {gated / baseline:.2f}x the baseline's cost")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
