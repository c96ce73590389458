"""Worst per-record cost of hostile input: decode + decide, against an ordinary event.

Usage: `python benchmarks/bench_hostile.py [REPEATS]`. Not a test: it prints, per hostile
record, the µs to decode and decide it (memo caches cleared, best of REPEATS), the peak
memory traced while doing so, and the ratio to an ordinary forwarded event; then the worst.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.core import consent as consent_module
from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import ConsentRecord, StateSnapshot
from streams.core.rules.loader import load_ruleset
from streams.gen.signals import BitWriter, encode_gpp, encode_tc_string, encode_usnat

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = StateSnapshot(consent=(ConsentRecord(subject="account:a-1", interest_based_ads="granted"),))


def _event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": "a-1",
        "device": {"platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "DE", "consent": {"tcf": encode_tc_string({1, 7}, {755})}},
        "properties": {"campaign_id": "spring"},
    }
    return event | changes


def _signals(**signals: str) -> dict[str, Any]:
    return _event(context={"country": "DE", "consent": signals})


def _gpp_header(offset: int, span: int, entries: int = 1) -> str:
    writer = BitWriter()
    writer.write(3, 6)
    writer.write(1, 6)
    writer.write(entries, 12)
    for _ in range(entries):
        writer.write(1, 1)
        writer.write_fibonacci(offset)
        writer.write_fibonacci(span)
    return writer.render()


def _tc_with_restrictions(count: int, ranges: int) -> str:
    bits = [int(b) for c in encode_tc_string({1, 7}, {755}) for b in format(_sextet(c), "06b")]
    writer = BitWriter()
    writer.bits = bits[: 213 + (16 + 1 + 12 + 1 + 16) + (16 + 1 + 12)]
    writer.write(count, 12)
    for index in range(count):
        writer.write(1 + index // 3, 6)
        writer.write(index % 3, 2)
        writer.write(ranges, 12)
        for _ in range(ranges):
            writer.write(1, 1)
            writer.write(1, 16)
            writer.write(65535, 16)
    return writer.render()


def _sextet(char: str) -> int:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(char)


def _full_bitfields() -> str:
    bits = [int(b) for c in encode_tc_string({1, 7}, {755}) for b in format(_sextet(c), "06b")]
    writer = BitWriter()
    writer.bits = bits[:213]
    for _ in range(2):
        writer.write(65535, 16)
        writer.write(0, 1)
        writer.bits.extend([1] * 65535)
    writer.write(0, 12)
    return writer.render()


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE: dict[str, Callable[[], bytes]] = {
    "ordinary event (baseline)": lambda: json.dumps(_event()).encode(),
    "gpp header: range of 10^8 sections": lambda: json.dumps(_signals(gpp=_gpp_header(1, 10**8))).encode(),
    "gpp header: 4095 wide ranges": lambda: json.dumps(_signals(gpp=_gpp_header(1, 2**40, 4095))).encode(),
    "gpp: 100k sections": lambda: json.dumps(_signals(gpp="DBABMA" + "~x" * 100_000)).encode(),
    "tcf: 72 restrictions x 150 ranges 1..65535": lambda: json.dumps(
        _signals(tcf=_tc_with_restrictions(72, 150))
    ).encode(),
    "tcf: 4095 restrictions x 1 range 1..65535": lambda: json.dumps(
        _signals(tcf=_tc_with_restrictions(4095, 1))
    ).encode(),
    "tcf: two full 65,535-vendor bitfields": lambda: json.dumps(_signals(tcf=_full_bitfields())).encode(),
    "tcf: 200k characters": lambda: json.dumps(_signals(tcf="C" + "A" * 200_000)).encode(),
    "usnat: 50k GPC subsections": lambda: json.dumps(
        _signals(gpp=encode_gpp({7: encode_usnat() + ".Y" * 50_000}))
    ).encode(),
    "us privacy: 500k characters": lambda: json.dumps(_signals(us_privacy="1" + "Y" * 500_000)).encode(),
    "event time: year 1 with +01:00": lambda: json.dumps(
        _event(event_time="0001-01-01T00:00:00+01:00")
    ).encode(),
    "campaign id: 2**70": lambda: json.dumps(_event(properties={"campaign_id": 2**70})).encode(),
    "properties nested 190 deep": lambda: json.dumps(_event(properties=_nested(190))).encode(),
    "properties nested 10,000 deep": lambda: (
        b'{"event_id":"e","properties":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    ),
    "number of 4,300 digits": lambda: json.dumps(_event(properties={"n": int("9" * 4300)})).encode(),
    "50k undeclared keys": lambda: json.dumps(_event(**{f"k{i}": i for i in range(50_000)})).encode(),
    "50k keys, last one duplicated": lambda: (
        json.dumps(_event(**{f"k{i}": i for i in range(50_000)})).encode()[:-1] + b', "k0": 1}'
    ),
    "1 MB user agent": lambda: json.dumps(
        _event(context={"country": "US", "user_agent": "x" * 1_000_000})
    ).encode(),
}


def _cost(raw: bytes, ruleset: Any, repeats: int) -> tuple[float, int, str]:
    best = float("inf")
    outcome = ""
    for _ in range(repeats):
        consent_module._decode_tcf_memo.cache_clear()
        consent_module._decode_gpp_memo.cache_clear()
        start = time.perf_counter()
        decisions = decide(decode_json(raw), SNAPSHOT, ruleset)
        best = min(best, time.perf_counter() - start)
        outcome = decisions[0].verdict + ":" + ",".join(decisions[0].reasons)
    consent_module._decode_tcf_memo.cache_clear()
    consent_module._decode_gpp_memo.cache_clear()
    tracemalloc.start()
    decide(decode_json(raw), SNAPSHOT, ruleset)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak, outcome


def main(repeats: int = 5) -> None:
    """Run every hostile record and print its cost."""
    ruleset = load_ruleset(ROOT / "rules").with_keys(
        {"install-attribution": b"a" * 32, "signup-conversions": b"b" * 32}
    )
    rows = []
    for name, build in HOSTILE.items():
        raw = build()
        seconds, peak, outcome = _cost(raw, ruleset, repeats)
        rows.append((name, len(raw), seconds, peak, outcome))
    baseline = rows[0][2]
    print(f"{'record':44} {'bytes':>9} {'µs':>9} {'× base':>8} {'peak KiB':>9}  install-attribution")
    for name, size, seconds, peak, outcome in rows:
        print(
            f"{name:44} {size:9,} {seconds * 1e6:9.1f} {seconds / baseline:8.1f} {peak / 1024:9.0f}",
            outcome[:60],
        )
    worst = max(rows[1:], key=lambda row: row[2])
    per_byte = max(rows[1:], key=lambda row: row[2] / row[1])
    print(
        f"\nworst per record: {worst[0]}: {worst[2] * 1e3:.2f} ms",
        f"({worst[2] / baseline:.0f} × an ordinary event)",
    )
    print(f"worst per input byte: {per_byte[0]}: {per_byte[2] / per_byte[1] * 1e9:.1f} ns/byte")
    print(f"largest peak memory: {max(r[3] for r in rows) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
