"""The shell's work per input without a broker: `RecordDecider.emit` into a counting sink.

Usage: `python -m benchmarks.bench_emit [INPUTS] [--split] [--once] [--kind=gated|receivable] [--digest]`
       `python -m benchmarks.bench_emit --cold [INPUTS]`  (the headline form, default 20,000 inputs)

It decodes, looks up state, decides for every partner and builds the partner and blocked
records of the generator's mix (population 2,000, state tables filled), and adds each batch of
500 inputs to the metrics, the way `run` does, minus librdkafka and the transaction. Prints
CPU µs per input (best of 5), split into inputs no rule can receive and the others with
`--split`, and the records and bytes written.

`--cold` is the figure that counts: one pass over INPUTS inputs the process has never seen
(after 300 warm-up ones), so the phone-number, pseudonym, TCF, leak-scan and event-time caches
hold only what earlier inputs of the same pass put there, as in a long run over fresh traffic;
then a second pass over the same inputs (warm, labelled so) and the best of 5 warm passes (the
figure earlier rounds reported). Each is split into inputs no rule can receive and the others.

For instruction counts of the cold pass (which the machine's load does not move):

    valgrind --tool=cachegrind --cache-sim=no python -m benchmarks.bench_emit --cold --once 3000 [--kind=K]

minus the same with `--dry` (everything but the pass), divided by the inputs it prints.

`--once` runs the inputs once after 300 warm-up ones and prints nothing but the counts: the
form to count instructions with, which unlike time does not move with the machine's load:

    valgrind --tool=cachegrind --cache-sim=no python -m benchmarks.bench_emit 4000 --once

(subtract a run with 0 inputs, divide by the inputs). `--kind=gated|receivable` runs only one
kind of input; its classification costs instructions too, so subtract a run without `--twice`
from one with it (`--once --twice` runs the inputs twice).

`--notices` remembers forwards as `run` does when some rule sends opt-out notices (the
forwarded-marker writes join the outputs; a repeat run over the same inputs finds its markers
and writes none, as a steady stream of known people does).

`--digest` prints one SHA-256 over every record the first INPUTS inputs produce (topic, key,
value, headers, in order) and the counters their batch adds to the metrics, in `copy`,
`reference` and redacted mode, with every seventh input decided on stale state: equal digests
before and after a change to the shell mean not one output byte changed.
"""

from __future__ import annotations

import hashlib
import sys
import time

import orjson

from benchmarks.common import population
from streams.core.decide import receivable_types
from streams.core.notices import plans_of
from streams.runtime.config import Settings
from streams.runtime.formats.payload import Keyring, PayloadProtector
from streams.runtime.formats.records import SourceRef
from streams.runtime.kafka.io import Headers
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.pipeline.decider import BatchTally, GuardState, RecordDecider
from streams.runtime.pipeline.notices import ForwardTracker
from streams.runtime.state.tables import ForwardedTable

WARM_UP = 300
# `--cold`'s population: as `make bench`'s pipeline traffic, so a subject recurs ~once per
# 20,000 inputs (with the default 2,000 each recurs ~10 times and its caches are warm).
COLD_POPULATION = 20_000
TOPIC = "internal.events"
BATCH = 500  # inputs per batch whose tally is added to the metrics (the job's batches adapt to load)
# A fixed time long past, as at the benchmark's peak (its input topic is filled beforehand):
# every end-to-end latency falls in the histogram's last bucket, and counts stay reproducible.
INPUT_TIMESTAMP_MS = 1_795_000_000_000


class CountingSink:
    """Counts what would be produced."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0

    def __call__(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None) -> None:
        self.records += 1
        self.bytes += len(value) + len(key or b"")


def build(
    blocked_original: str = "copy",
    protector: PayloadProtector | None = None,
    size: int = 2_000,
    events: int = 20_000,
) -> tuple[RecordDecider, list[tuple[bytes | None, bytes | None]]]:
    """A decider over the shipped rules and a filled population, and inputs of the generator's mix."""
    mix = population(seed=11, size=size)
    settings = Settings(bootstrap_servers="unused:9092", blocked_original=blocked_original)
    state = GuardState(settings, {}, GuardMetrics())
    state.consent, state.signup_status = mix.consent, mix.signup_status
    decider = RecordDecider(settings, mix.ruleset, protector or PayloadProtector("full"), state)
    if "--notices" in sys.argv:
        table = ForwardedTable()
        tracker = ForwardTracker(
            plans_of(mix.ruleset), table, settings.forwarded_topic, settings.optout_lookback
        )
        decider.track(tracker)
    inputs = [(e.key, e.value) for e in mix.generator.events(events)]
    return decider, inputs


def run(decider: RecordDecider, inputs: list[tuple[bytes | None, bytes | None]], first: int) -> CountingSink:
    """Emit every input into a counting sink, adding each batch's tally to the metrics as `run` does."""
    sink, tally, metrics = CountingSink(), BatchTally(), decider.state.metrics
    for offset, (key, value) in enumerate(inputs, start=first):
        source = SourceRef(TOPIC, 0, offset, INPUT_TIMESTAMP_MS, key, "json")
        decider.emit(value, source, False, tally, sink)
        if (offset - first + 1) % BATCH == 0:
            tally.apply(metrics, 0.1)
            tally = BatchTally()
    tally.apply(metrics, 0.1)
    return sink


def _length_prefixed(*parts: bytes | str | None) -> bytes:
    out = b""
    for part in parts:
        data = b"\xff" if part is None else part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return out


# Metric families whose values are clock readings, not counts of what was decided.
_TIMED_FAMILIES = (
    "partner_guard_end_to_end_latency_seconds",
    "partner_guard_batch_duration_seconds",
    "partner_guard_start_time_seconds",  # when the process started: a clock reading too
)


def digest(count: int) -> str:
    """SHA-256 over every output record and metric count of the first `count` inputs."""
    hashed = hashlib.sha256()
    redacting = PayloadProtector("redacted", Keyring({"k1": b"\x03" * 32}, "k1"))
    for blocked_original, protector in (("copy", None), ("reference", None), ("copy", redacting)):
        decider, inputs = build(blocked_original, protector)
        tally, metrics = BatchTally(), GuardMetrics()

        def sink(topic: str, value: bytes, key: bytes | None, headers: Headers | None) -> None:
            hashed.update(_length_prefixed(topic, key, value))
            for name, header in headers or ():
                hashed.update(_length_prefixed(name, header))

        for offset, (key, value) in enumerate(inputs[:count]):
            source = SourceRef(TOPIC, offset % 3, offset, 1_795_000_000_000 + offset, key, "json")
            decider.emit(value, source, offset % 7 == 0, tally, sink)
        tally.apply(metrics, 0.5)
        for family in metrics.registry.collect():
            if family.name in _TIMED_FAMILIES:
                continue
            for sample in sorted(family.samples, key=lambda s: (s.name, sorted(s.labels.items()))):
                if not sample.name.endswith("_created"):
                    hashed.update(f"{sample.name} {sorted(sample.labels.items())} {sample.value}\n".encode())
    return hashed.hexdigest()


def _cpu(work: list[tuple[bytes | None, bytes | None]], decider: RecordDecider) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        run(decider, work, 0)
        best = min(best, time.process_time() - start)
    return best / max(1, len(work)) * 1e6


def _kinds(
    decider: RecordDecider, work: list[tuple[bytes | None, bytes | None]]
) -> tuple[list[tuple[bytes | None, bytes | None]], list[tuple[bytes | None, bytes | None]]]:
    """The inputs no rule can receive (malformed ones included), and the others."""
    receivable = receivable_types(decider.ruleset)
    gated: list[tuple[bytes | None, bytes | None]] = []
    others: list[tuple[bytes | None, bytes | None]] = []
    for key, value in work:
        decoded = decider.decode(value, "json")
        (others if getattr(decoded, "event_type", None) in receivable else gated).append((key, value))
    return gated, others


def _classified(
    decider: RecordDecider, work: list[tuple[bytes | None, bytes | None]]
) -> tuple[list[tuple[bytes | None, bytes | None]], list[tuple[bytes | None, bytes | None]]]:
    """As `_kinds`, read with orjson: the guard's decoder is not run, so no cache of it is filled."""
    receivable = receivable_types(decider.ruleset)
    gated: list[tuple[bytes | None, bytes | None]] = []
    others: list[tuple[bytes | None, bytes | None]] = []
    for key, value in work:
        try:
            event_type = orjson.loads(value or b"").get("event_type")
        except (orjson.JSONDecodeError, AttributeError):
            event_type = None
        (others if event_type in receivable else gated).append((key, value))
    return gated, others


def _one_pass(decider: RecordDecider, work: list[tuple[bytes | None, bytes | None]], first: int) -> float:
    start = time.process_time()
    run(decider, work, first)
    return (time.process_time() - start) / max(1, len(work)) * 1e6


def cold(count: int) -> dict[str, float]:
    """CPU µs per input: one pass over unseen inputs, per kind, then warm passes over the same."""
    decider, inputs = build(size=COLD_POPULATION, events=WARM_UP + count)
    run(decider, inputs[:WARM_UP], 0)
    work = inputs[WARM_UP : WARM_UP + count]
    gated, others = _classified(decider, work)
    # Each kind's inputs are new to the process when first run: two fresh deciders, one per kind,
    # so the receivable pass does not inherit what the gated pass cached and vice versa.
    figures: dict[str, float] = {
        "inputs": float(len(work)),
        "receivable_share": len(others) / max(1, len(work)),
    }
    figures["cold"] = _one_pass(decider, work, WARM_UP)
    figures["second"] = _one_pass(decider, work, WARM_UP)
    figures["warm"] = _cpu(work, decider)
    for name, part in (("gated", gated), ("receivable", others)):
        fresh, _ = build(size=COLD_POPULATION, events=WARM_UP)
        run(fresh, inputs[:WARM_UP], 0)
        figures[f"{name}_cold"] = _one_pass(fresh, part, WARM_UP)
        figures[f"{name}_warm"] = _cpu(part, fresh)
    return figures


def cold_once(count: int, kind: str, dry: bool) -> None:
    """One cold pass and nothing else (for cachegrind: subtract the same command with `--dry`)."""
    decider, inputs = build(size=COLD_POPULATION, events=WARM_UP + count)
    run(decider, inputs[:WARM_UP], 0)
    work = inputs[WARM_UP : WARM_UP + count]
    if kind:
        gated, others = _classified(decider, work)
        work = gated if kind == "gated" else others
    sink = run(decider, [] if dry else work, WARM_UP)
    print(f"inputs {len(work)} records {sink.records} bytes {sink.bytes}")


def print_cold(count: int) -> None:
    """Print the cold and warm figures, labelled."""
    f = cold(count)
    print(
        f"RecordDecider.emit, {int(f['inputs']):,} inputs never seen before"
        f" ({f['receivable_share']:.0%} receivable by some rule), CPU µs per input:"
    )
    print(
        f"  all inputs            cold (one pass) {f['cold']:6.1f}   second pass {f['second']:6.1f}"
        f"   warm (best of 5) {f['warm']:6.1f}"
    )
    print(
        f"  no rule can receive   cold (one pass) {f['gated_cold']:6.1f}"
        f"   warm (best of 5) {f['gated_warm']:6.1f}"
    )
    print(
        f"  some rule can receive cold (one pass) {f['receivable_cold']:6.1f}"
        f"   warm (best of 5) {f['receivable_warm']:6.1f}"
    )


def main(count: int, once: bool, split: bool, kind: str, repeat: int = 1) -> None:
    """Run and print the figures."""
    if "--cold" in sys.argv and once:
        cold_once(count, kind, "--dry" in sys.argv)
        return
    if "--cold" in sys.argv:
        print_cold(count)
        return
    if "--digest" in sys.argv:
        print(f"inputs {count} sha256 {digest(count)}")
        return
    decider, inputs = build()
    run(decider, inputs[:WARM_UP], 0)
    work = inputs[WARM_UP : WARM_UP + count]
    if kind:
        gated, others = _kinds(decider, inputs[WARM_UP : WARM_UP + 3 * count])
        work = (gated if kind == "gated" else others)[:count]
    if once:
        for _ in range(repeat):
            sink = run(decider, work, WARM_UP)
        print(f"inputs {len(work)} records {sink.records} bytes {sink.bytes}")
        return
    sink = run(decider, work, WARM_UP)
    print(
        f"inputs: {len(work)}, records per input {sink.records / max(1, len(work)):.2f},"
        f" bytes per input {sink.bytes / max(1, len(work)):,.0f}"
    )
    print(f"all inputs               {_cpu(work, decider):7.1f} µs/input (CPU, best of 5)")
    if split:
        gated, others = _kinds(decider, work)
        print(f"no rule can receive ({len(gated)})  {_cpu(gated, decider):7.1f} µs/input")
        print(f"some rule can receive ({len(others)}) {_cpu(others, decider):7.1f} µs/input")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    kinds = [a.removeprefix("--kind=") for a in sys.argv if a.startswith("--kind=")]
    main(
        int(args[0]) if args else (20_000 if "--cold" in sys.argv else 4_000),
        "--once" in sys.argv,
        "--split" in sys.argv,
        kinds[0] if kinds else "",
        2 if "--twice" in sys.argv else 1,
    )
