"""Quix Streams, exactly-once, calling this project's `decode_json` + `decide` (a peer pipeline).

    .venv-peers/bin/python benchmarks/peer_quix.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC COUNT

Runs in its own virtual environment (quixstreams pins confluent-kafka < 2.13; `make bench`
builds `.venv-peers/`) with the repository on `sys.path`. Per input it writes one output per
partner: the projected record when forwarded, else a blocked record carrying the reasons and
the original (base64), as a team wrapping our core in Quix Streams would. No state lookups
(every decision gets an empty snapshot), so it does less work than the guard. Prints one
JSON line: seconds per record, {"wall_s": ..., "cpu_s": ...} (CPU: all threads of the process).
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quixstreams import Application  # noqa: E402

from streams.core.codec import decode_json  # noqa: E402
from streams.core.decide import decide  # noqa: E402
from streams.core.models import StateSnapshot  # noqa: E402
from streams.core.rules.loader import load_ruleset  # noqa: E402

KEYS = {"install-attribution": b"a" * 32, "signup-conversions": b"b" * 32}


def main(bootstrap: str, input_topic: str, output_topic: str, count: int) -> None:
    """Process `count` records and print the rate from the first to the last one."""
    ruleset = load_ruleset(ROOT / "rules").with_keys(KEYS)
    empty = StateSnapshot()

    def outputs(value: bytes) -> list[bytes]:
        out = []
        for decision in decide(decode_json(value), empty, ruleset):
            if decision.forwarded:
                out.append(orjson.dumps(decision.record))
            else:
                blocked = {
                    "partner": decision.partner,
                    "reasons": list(decision.reasons),
                    "details": list(decision.details),
                    "event_id": decision.event_id,
                    "original_b64": base64.b64encode(value).decode(),
                }
                out.append(orjson.dumps(blocked))
        return out

    seen = 0
    first = last = first_cpu = last_cpu = 0.0

    def processed(*_: object) -> None:
        nonlocal seen, first, last, first_cpu, last_cpu
        seen += 1
        if seen == 1:
            first, first_cpu = time.perf_counter(), time.process_time()
        if seen >= count:
            last, last_cpu = time.perf_counter(), time.process_time()
            app.stop()

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        consumer_extra_config={"session.timeout.ms": 6000},
        on_message_processed=processed,
        loglevel="WARNING",
    )
    source = app.topic(input_topic, value_deserializer="bytes", key_deserializer="bytes")
    sink = app.topic(output_topic, value_serializer="bytes", key_serializer="bytes")
    frame = app.dataframe(source)
    frame = frame.apply(outputs, expand=True)
    frame.to_topic(sink)
    app.run()
    done = seen - 1
    print(orjson.dumps({"wall_s": (last - first) / done, "cpu_s": (last_cpu - first_cpu) / done}).decode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
