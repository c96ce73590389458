"""Pure `decide` cost per event on a realistic mix, against a JSON strip baseline measured in
the same run. Usage: `python -m benchmarks.bench_decide [EVENTS]` (or `make bench`).

Prints CPU µs per event (process time: other load on a shared machine disturbs it least), µs
per (event, partner) pair, and the ratio to the baseline. The first figure is cold: one pass of
the gated decode + decide over events never seen before (first thing the process decides, so
the phone-number, TCF and leak-scan caches start empty); the others are warm, best of 3 passes
over the same events, as earlier rounds reported them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import orjson

from benchmarks.common import best_of, population
from streams.core.codec import decode_json, decode_json_gated
from streams.core.decide import decide, receivable_types
from streams.runtime.state.tables import snapshot_for

DROP = ("context", "user", "properties")


def main(count: int = 50_000) -> None:
    """Run the benchmark and print the figures."""
    mix = population(seed=11, size=5_000)
    ruleset, generator, consent, status = mix.ruleset, mix.generator, mix.consent, mix.signup_status
    both = [e.value or b"" for e in generator.events(2 * count)]
    raw, unseen = both[:count], both[count:]
    receivable = receivable_types(ruleset)
    unseen_snapshots = [snapshot_for(decode_json(r), consent, status, False) for r in unseen]
    start = time.process_time()
    for value, snap in zip(unseen, unseen_snapshots, strict=True):
        decide(decode_json_gated(value, receivable), snap, ruleset)
    cold = time.process_time() - start

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

    def gated_decode_and_decide() -> None:  # what `run` does: full validation only where it matters
        for value, snap in zip(raw, snapshots, strict=True):
            decide(decode_json_gated(value, receivable), snap, ruleset)

    baseline = best_of(3, strip_baseline)
    pure = best_of(3, decide_only)
    full = best_of(3, decode_and_decide)
    gated = best_of(3, gated_decode_and_decide)
    pairs = count * len(ruleset.partners)
    print(f"events: {count}, partners: {len(ruleset.partners)}, verdicts: {dict(verdicts)}")
    print(f"gated decode + decide    {cold / count * 1e6:7.2f} µs/event  cold: one pass over unseen events")
    print("warm (best of 3 passes over the same events):")
    print(f"json strip baseline      {baseline / count * 1e6:7.2f} µs/event")
    print(f"decide (pre-decoded)     {pure / count * 1e6:7.2f} µs/event  {pure / pairs * 1e6:6.2f} µs/pair")
    print(f"decode + decide          {full / count * 1e6:7.2f} µs/event  {full / pairs * 1e6:6.2f} µs/pair")
    print(f"gated decode + decide    {gated / count * 1e6:7.2f} µs/event  {gated / pairs * 1e6:6.2f} µs/pair")
    print(f"ratio decode+decide / json strip: {full / baseline:.2f}x the baseline's cost")
    print(f"ratio gated decode+decide / json strip: {gated / baseline:.2f}x the baseline's cost")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
