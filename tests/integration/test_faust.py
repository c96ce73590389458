"""The Faust engine (`partner-guard run --engine faust`) against the embedded broker.

The confluent-kafka job's own conservation, leak, poison and read-your-revocation tests run
here unchanged, with `start_guard` switched to the Faust engine; plus a parity test (both
engines, same input and state, same output records; its input includes the poison records
and the crash classes of test_hostile_job.py), a SIGKILL test (nothing lost, duplicates
counted), a `consent_stale` test and a `faust -A` test.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.broker.embedded import EmbeddedBroker, free_port
from streams.gen.traffic import KeyedRecord
from streams.runtime.formats.records import partner_views
from streams.runtime.kafka.calls import EXIT_TRANSACTION_HUNG
from tests.integration import engine_scenarios as scenarios
from tests.integration import kafka_helpers, test_hostile_job, test_job
from tests.integration.engine_scenarios import INPUT, wait_consumed
from tests.integration.kafka_helpers import PARTNERS, produce, seed_population, start_guard

pytestmark = pytest.mark.integration
HTTP_OK = 200
# Generous: hung is 20 + 10 s after batch 2's sends, on a loaded machine that also starts a worker.
WAIT_HUNG_EXIT_S = 180.0
ENGINE_SPECIFIC_SOURCE = frozenset({"partition", "offset", "timestamp_ms"})
ENGINE_SPECIFIC_HEADERS = frozenset({"pg-source-partition", "pg-source-offset"})
_OVERSIZED = {
    "event_id": "ev-parity-big",
    "event_type": "app_open",
    "event_time": 1795000000000,
    "device": {"platform": "android"},
    "properties": {"campaign_id": "x" * 60_000},
}
POISON = [  # malformed and poison inputs: each must end blocked, the same way on both engines
    KeyedRecord(b"p1", b"{not json"),
    KeyedRecord(None, orjson.dumps({"event_id": "ev-keyless", "event_type": "brand_new_type"})),
    KeyedRecord(b"p1", b""),
    KeyedRecord(b"p1", None),
    KeyedRecord(b"p1", orjson.dumps(_OVERSIZED)),
    KeyedRecord(b"p1", b"\xff\xfe\x00\x01"),
    KeyedRecord(b"p1", b'{"event_id": "dup", "event_id": "dup2", "event_type": "app_open"}'),
]
_HOSTILE = [  # the crash classes of test_hostile_job.py (json: orjson refuses 2**70)
    (b"h", test_hostile_job._open("ev-time", "h1", event_time="0001-01-01T00:00:00+01:00")),
    (b"h", test_hostile_job._open("ev-number", "h1", properties={"campaign_id": 2**70})),
    (b"k" * 950_000, test_hostile_job._open("ev-key", "h1")),  # too large to travel with its blocked record
    (b"h", test_hostile_job._open("ev-signal", "h1", user={"age": 12})),
]
POISON += [KeyedRecord(key, json.dumps(event).encode()) for key, event in _HOSTILE]


@pytest.fixture
def faust_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `start_guard` of the reused tests starts the Faust engine."""
    monkeypatch.setattr(test_job, "start_guard", functools.partial(start_guard, engine="faust"))
    yield


def test_faust_conservation_no_leaks_and_metrics_agree(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # a third of the kafka engine's input: the Faust engine decides about a quarter as fast
    test_job.test_conservation_no_leaks_and_metrics_agree(broker, tmp_path, count=6_000)


def test_faust_read_your_revocation_100_times(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    test_job.test_read_your_revocation_100_times(broker, tmp_path, "rocksdb")  # the disk store: shared too


def test_faust_poison_records_are_blocked_and_the_worker_keeps_running(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    test_job.test_poison_records_are_blocked_and_the_job_keeps_running(broker, tmp_path)


def _canonical(topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> bytes:
    """One output record as canonical JSON, without what depends on the engine or the run.

    Dropped: the input's partition, offset and timestamp (in the blocked record's `source` and
    its `pg-source-partition`/`pg-source-offset` headers); keyless inputs land on a random
    partition, and offsets follow from that.
    """
    body = orjson.loads(value or b"null")
    if isinstance(body, dict) and isinstance(body.get("source"), dict):
        body["source"] = {k: v for k, v in body["source"].items() if k not in ENGINE_SPECIFIC_SOURCE}
    kept = sorted((k, v.decode()) for k, v in headers if k not in ENGINE_SPECIFIC_HEADERS)
    record = {"topic": topic, "key": key.decode("latin-1") if key else None, "value": body, "headers": kept}
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _views(canonical: bytes) -> list[dict[str, Any]]:
    """The per-partner views of one canonical blocked record."""
    return partner_views(orjson.loads(canonical)["value"])


def _outputs(bootstrap: str, expect: dict[str, int | None]) -> dict[str, Counter[bytes]]:
    return {
        topic: Counter(
            _canonical(topic, *record) for record in kafka_helpers.read_topic(bootstrap, topic, expect=count)
        )
        for topic, count in expect.items()
    }


def test_parity_same_input_same_outputs_on_both_engines(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Both engines, each on its own broker with the same state and input: the same records out.

    Blocked originals by reference where allowed, so both payload forms are compared; then
    replay re-decides every Faust blocked record (fetching referenced originals back).
    """
    with EmbeddedBroker.start(log_path=tmp_path / "tansu-faust.log") as faust_broker:
        inputs: list[KeyedRecord] = []
        for target in (broker, faust_broker):
            generator = seed_population(target.bootstrap, INPUT, 400, 41)
            inputs = [*generator.events(2000), *POISON]
            produce(target.bootstrap, INPUT, inputs)
        env = {"PARTNER_GUARD_MAX_RECORD_BYTES": "40000", "PARTNER_GUARD_BLOCKED_ORIGINAL": "reference"}
        guards = [
            start_guard(broker.bootstrap, tmp_path, INPUT, "parity", env, engine="kafka"),
            start_guard(faust_broker.bootstrap, tmp_path, INPUT, "parity", env, engine="faust"),
        ]
        try:
            for guard in guards:
                guard.wait_ready()
            for guard in guards:
                wait_consumed(guard, len(inputs))
            counts = []
            for guard in guards:  # the engines agree on every count before a record is compared
                per_partner = {
                    (p, verdict): guard.metric_value(
                        "partner_guard_decisions_total", partner=p, verdict=verdict
                    )
                    for p in PARTNERS
                    for verdict in ("forward", "block")
                }
                counts.append(per_partner)
            assert counts[0] == counts[1]
            expect: dict[str, int | None] = {
                f"partner.{p}.events": int(counts[0][(p, "forward")]) for p in PARTNERS
            }
            assert all(expect.values())  # both partners are forwarded something
            expect["guard.blocked"] = None  # one record per input with any block: read to the end
            kafka_out = _outputs(broker.bootstrap, expect)
            faust_out = _outputs(faust_broker.bootstrap, expect)
            for topic, count in expect.items():
                if count is not None:
                    assert sum(kafka_out[topic].values()) == count, topic
                assert kafka_out[topic] == faust_out[topic], topic
            views = [view for record in kafka_out["guard.blocked"].elements() for view in _views(record)]
            for partner in PARTNERS:
                assert sum(1 for v in views if v["partner"] == partner) == counts[0][(partner, "block")]
            sources = [view["source"] for view in kafka_helpers.read_blocked(faust_broker.bootstrap)]
            assert all(isinstance(s["timestamp_ms"], int) for s in sources)  # kept, just not compared
            assert {"malformed", "record_too_large", "event_type_not_allowed"} <= {
                r for v in views for r in v["reasons"]
            }
            assert {"reference", "full"} <= {v["payload_mode"] for v in views}
            report = tmp_path / "faust-replay.jsonl"
            replay = kafka_helpers.run_cli(faust_broker, "replay", "--no-git", "--jsonl", str(report))
            statuses = Counter(row["status"] for row in kafka_helpers.read_jsonl(report))
            assert sum(statuses.values()) == len(views), replay.stdout + replay.stderr
            cannot_redecide = [v for v in views if v["reduced"] or "internal_error" in v["reasons"]]
            assert statuses == Counter(
                match=len(views) - len(cannot_redecide), unverifiable=len(cannot_redecide)
            )
            print(f"replay of the Faust engine's blocked records: {dict(statuses)}")
        finally:
            for guard in guards:
                assert guard.stop() == 0


def test_faust_sigkill_mid_stream_loses_nothing(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """At least once: after SIGKILL and a restart every input has its outputs; duplicates counted."""
    generator = seed_population(broker.bootstrap, INPUT, 1000, 9)
    scenarios.sigkill_and_restart(broker, tmp_path, list(generator.events(4_000)), 1_000, engine="faust")


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a /metrics text, or None when it is not exported."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def _lag_samples(text: str) -> dict[str, float]:
    """`partner_guard_consumer_lag_records` of the input topic, by partition."""
    return {
        found.labels["partition"]: float(found.value)
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == "partner_guard_consumer_lag_records" and found.labels.get("topic") == INPUT
    }


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_faust_sigterm_finishes_the_open_batch_and_exits_0(
    broker: EmbeddedBroker, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """SIGTERM (or SIGINT) mid-stream: exit 0 with every batch it took sent and its offsets
    committed, so the restart decides each input exactly once (no re-delivery, at least once or not)."""
    generator = seed_population(broker.bootstrap, INPUT, 500, 13)
    stopped_in_s = scenarios.sigterm_and_restart(
        broker, tmp_path, list(generator.events(4_000)), 1_000, stop_signal=stop_signal, engine="faust"
    )
    print(f"the Faust worker stopped {stopped_in_s:.1f} s after {stop_signal.name}")


@pytest.mark.parametrize("engine", ["faust", "kafka"])
def test_both_engines_export_consumer_and_state_lag(
    broker: EmbeddedBroker, tmp_path: Path, engine: str
) -> None:
    """`partner_guard_consumer_lag_records` for every input partition (0 once all is decided) and
    `partner_guard_state_lag_records` for both state topics, on either engine; transaction
    metrics on the kafka engine, and on the Faust engine none, the gap its start line names."""
    generator = seed_population(broker.bootstrap, INPUT, 200, 17)
    events = list(generator.events(600))
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, "lag-metrics", engine=engine)
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, events)
        wait_consumed(guard, len(events))
        deadline = time.monotonic() + 60
        while True:  # the gauges refresh every 5 s
            text = guard.metrics()
            lag = _lag_samples(text)
            if lag == {"0": 0, "1": 0, "2": 0} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert lag == {"0": 0, "1": 0, "2": 0}, text
        for topic in scenarios.STATE_TOPICS:
            assert _sample(text, "partner_guard_state_lag_records", topic=topic) == 0, text
        committed = _sample(text, "partner_guard_transactions_total", outcome="committed")
        if engine == "kafka":
            assert committed is not None and committed > 0, text
        else:
            assert committed is None, text
            assert "gaps: no transaction metrics" in guard.log_path.read_text(errors="replace")
    finally:
        assert guard.stop() == 0


def test_faust_hung_acknowledgements_exit_4_and_lag_shows_the_backlog(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """`hang@2`: batch 2's acknowledgements never arrive. While it hangs the worker is alive
    (`/healthz` 200) and its consumer-lag gauge shows the undecided inputs; the watchdog ends
    it with exit 4 once the wait is 10 s past `transaction_call_timeout_ms`, naming the call."""
    generator = seed_population(broker.bootstrap, INPUT, 200, 19)
    env = {
        "PARTNER_GUARD_FAULT_BEFORE_COMMIT": "hang@2",
        "PARTNER_GUARD_BATCH_SIZE": "100",
        "PARTNER_GUARD_TRANSACTION_CALL_TIMEOUT_MS": "20000",  # hung = unacknowledged 20 s + 10 s
    }
    guard = start_guard(broker.bootstrap, tmp_path, INPUT, "hung-acks", env, engine="faust")
    try:
        guard.wait_ready()
        produce(broker.bootstrap, INPUT, list(generator.events(1_000)))
        lags: list[float] = []  # while batch 2 hangs and /healthz answers 200
        deadline = time.monotonic() + WAIT_HUNG_EXIT_S
        while guard.process.poll() is None and time.monotonic() < deadline:
            if "acknowledgements never arrive" in guard.log_path.read_text(errors="replace"):
                try:
                    text = guard.metrics() if guard.status("/healthz") == HTTP_OK else None
                except OSError:  # exited meanwhile
                    text = None
                if text is not None:
                    lags.append(sum(_lag_samples(text).values()))
            time.sleep(0.5)
        exited = guard.process.poll()  # None: never ended by the watchdog
        assert exited == EXIT_TRANSACTION_HUNG, (exited, guard.log())
    finally:
        guard.stop()
    print(f"consumer lag while batch 2 hung: {sorted(set(lags))}")
    assert lags, "never seen alive while hanging"
    assert max(lags) > 0, "the lag gauge never showed the undecided inputs"
    assert "'produce: acknowledgements' still blocked" in guard.log()


def _start_faust_cli(bootstrap: str, tmp_path: Path, group: str, settings: str) -> kafka_helpers.GuardProcess:
    """`faust -A streams.engines.faust_app worker`, configured by YAML and PARTNER_GUARD_* only."""
    port = free_port()
    config = tmp_path / "guard.yaml"
    config.write_text(f"group_id: {group}\nmetrics_port: {port}\nfaust_accepted_gaps: [P8]\n{settings}")
    env = {
        **os.environ,
        **kafka_helpers.KEY_ENV,
        "PARTNER_GUARD_CONFIG": str(config),
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": bootstrap,
        "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
        "PARTNER_GUARD_SESSION_TIMEOUT_MS": "6000",
        "PARTNER_GUARD_CREATE_TOPICS": "true",
        "PARTNER_GUARD_RULES_DIR": str(kafka_helpers.ROOT / "rules"),
    }
    log_path = tmp_path / "faust-cli.log"
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("faust")),
            "-A",
            "streams.engines.faust_app",
            "worker",
            "-l",
            "info",
        ],
        env=env,
        cwd=kafka_helpers.ROOT,
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    return kafka_helpers.GuardProcess(process, port, log_path)


def test_faust_state_behind_blocks_as_consent_stale(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """State far behind the events (a burst of consent records) blocks, never forwards on old state.

    Started as `faust -A streams.engines.faust_app worker`: the app is built from the settings.
    """
    scenarios.seed_lagging_account(broker.bootstrap)
    guard = _start_faust_cli(broker.bootstrap, tmp_path, "lag", "state_catchup_timeout_ms: 1\n")
    try:
        guard.wait_ready()
        burst = (
            KeyedRecord(f"account:filler-{i}".encode(), orjson.dumps({"subject": f"account:filler-{i}"}))
            for i in range(100_000)
        )
        produce(broker.bootstrap, "privacy.consent", burst)
        events = scenarios.lagging_installs(100)
        produce(broker.bootstrap, INPUT, events)
        wait_consumed(guard, len(events))
        scenarios.assert_blocked_as_stale(broker.bootstrap, events)
        decided = guard.metric_value("partner_guard_decisions_total")
        assert decided == len(events) * len(PARTNERS)
    finally:
        assert guard.stop() == 0
