"""Quix Streams, exactly-once, calling this project's `decode_json` + `decide` (a peer pipeline).

    .venv-peers/bin/python benchmarks/peer_quix.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC COUNT [--state]

Runs in its own virtual environment (quixstreams pins confluent-kafka < 2.13; `make bench`
builds `.venv-peers/`) with the repository on `sys.path`. Per input it writes one output per
partner: the projected record when forwarded, else a blocked record carrying the reasons and
the original (base64), as a team wrapping our core in Quix Streams would.

Without `--state` every decision gets an empty snapshot: no consent, no sign-up status, so
every rule blocks before projection and the leak scan (the stateless peer, which does less
work than the guard). With `--state` the consent and sign-up status topics are read from the
beginning to their end into this project's state tables (plain in-memory dicts) before the
run, outside the measured span, and each event's snapshot is looked up as the guard does: its
decisions reach the forward path wherever the guard's do (the fair peer). Prints one JSON
line: seconds per record, {"wall_s": ..., "cpu_s": ..., "forwarded": ...} (CPU: all threads of
the process; forwarded: the decisions that forwarded, which only the fair peer has).
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

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from quixstreams import Application  # noqa: E402

from streams.core.codec import decode_json  # noqa: E402
from streams.core.decide import consults_state, decide  # noqa: E402
from streams.core.models import Event, StateSnapshot  # noqa: E402
from streams.core.rules.loader import load_ruleset  # noqa: E402
from streams.runtime.state.tables import ConsentTable, SignupStatusTable, snapshot_for  # noqa: E402

KEYS = {"install-attribution": b"a" * 32, "signup-conversions": b"b" * 32}
STATE_TOPICS = ("privacy.consent", "member.signup-status")


def load_state(bootstrap: str) -> tuple[ConsentTable, SignupStatusTable]:
    """Both state topics read from the beginning to their end offsets into the state tables."""
    consent, status = ConsentTable(), SignupStatusTable()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        tables: tuple[ConsentTable | SignupStatusTable, ...] = (consent, status)
        for topic, table in zip(STATE_TOPICS, tables, strict=True):
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
            }
            left = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            while left:
                for message in consumer.consume(10_000, 1.0):
                    partition, offset = message.partition(), message.offset()
                    if message.error() or partition is None or offset is None:
                        continue
                    table.apply(message.key(), message.value())
                    if offset + 1 >= ends[partition]:
                        left.discard(partition)
    finally:
        consumer.close()
    return consent, status


def main(bootstrap: str, input_topic: str, output_topic: str, count: int, with_state: bool) -> None:
    """Process `count` records and print the rate from the first to the last one."""
    ruleset = load_ruleset(ROOT / "rules").with_keys(KEYS)
    empty = StateSnapshot()
    tables = load_state(bootstrap) if with_state else None
    forwarded = 0

    def outputs(value: bytes) -> list[bytes]:
        nonlocal forwarded
        out = []
        event = decode_json(value)
        # as the guard: state is looked up only for an event some rule can receive
        stateful = tables is not None and isinstance(event, Event) and consults_state(event, ruleset)
        snapshot = snapshot_for(event, *tables, False) if tables is not None and stateful else empty
        for decision in decide(event, snapshot, ruleset):
            if decision.forwarded:
                forwarded += 1
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
    rate = {"wall_s": (last - first) / done, "cpu_s": (last_cpu - first_cpu) / done, "forwarded": forwarded}
    print(orjson.dumps(rate).decode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), "--state" in sys.argv[5:])
