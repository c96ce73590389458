"""Memory per consent-table entry at 1M entries (target ≤ 250 bytes).

python benchmarks/bench_state_memory.py [ENTRIES]
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import orjson

from streams.runtime.state.tables import ConsentTable


def measure(entries: int) -> float:
    """Bytes allocated per entry by a table of `entries` realistic consent records."""
    record = {
        "subject": "account:acct-000000000",
        "updated_at": "2026-11-01T00:00:00Z",
        "interest_based_ads": "granted",
        "do_not_sell_or_share": False,
        "matched_identifier_opt_out": False,
        "ad_cookies": "granted",
        "jurisdiction": "US-CA",
    }
    values = []
    for i in range(256):  # a handful of distinct payloads; keys are all distinct
        record["jurisdiction"] = ["US-CA", "US-NY", "DE", "FR", "GB"][i % 5]
        values.append(orjson.dumps(record))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = ConsentTable()
    for i in range(entries):
        key = f"account:acct-{i:09d}".encode()  # the key is the record's subject (one identity)
        table.apply(key, values[i % 256].replace(b"acct-000000000", key[8:]))
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table) == entries and table.invalid_records == 0
    return used / entries


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"consent table: {measure(count):.0f} bytes per entry at {count:,} entries (target <= 250)")
