"""The Schema Registry under time: one circuit for the process, a bounded budget per batch.

Every test talks to a real HTTP server on loopback through the real confluent-kafka client
(`fake_registry`), or to a closed port: the client is never mocked. No assertion is on wall
time: what is bounded is counted (requests the server saw, lookups the budget allowed),
and a stall longer than the whole test shows as requests that never come back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from streams.broker.embedded import free_port
from streams.core.codec import encode_avro
from streams.core.models import Event, Malformed
from streams.core.schema import event_schema, load_schema_json
from streams.runtime.config import Settings
from streams.runtime.kafka.avro_input import (
    CIRCUIT_MAX_OPEN_S,
    LOOKUPS_SPENT,
    MAX_FETCHES_PER_BATCH,
    MAX_LET_GO,
    REGISTRY_UNAVAILABLE,
    RETRY_AFTER_S,
    AvroDecoder,
    FetchBudget,
    RegistryCircuit,
    avro_decoder,
    registry_client,
    registry_lookup,
)
from tests.runtime.kafka.fake_registry import FakeRegistry, fake_registry

KNOWN_ID = 7
MADE_UP_IDS = range(1_000, 1_300)  # 300 ids no registry knows
STALL_S = 120.0  # longer than any test: a request that waits for it never comes back in time
EVENT = {
    "event_id": "reg-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-reg",
    "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
    "context": {"country": "US"},
    "properties": {"campaign_id": "reg"},
}


def framed(schema_id: int) -> bytes:
    return encode_avro(EVENT, event_schema(), schema_id)


def settings_for(url: str, timeout_ms: int = 100) -> Settings:
    return Settings(
        bootstrap_servers="127.0.0.1:9092",
        input_formats={"internal.events": "avro"},
        schema_registry_url=url,
        schema_registry_timeout_ms=timeout_ms,
    )


class FakeClock:
    """The circuit's clock, moved by hand (waits for the server stay real)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stalled() -> Iterator[FakeRegistry]:
    with fake_registry({KNOWN_ID: json.dumps(load_schema_json())}, stall_s=STALL_S) as registry:
        yield registry


def test_a_stalled_registry_costs_one_lookup_not_one_per_made_up_id(stalled: FakeRegistry) -> None:
    """The issue's case through the job's own decoder: 300 records, each under a made-up id,
    in one batch. Today each id waits its own timeout (minutes); the circuit lets one request
    through, gives it up after the call limit, and blocks every other id at once."""
    beats: list[int] = []
    decoder = avro_decoder(settings_for(stalled.url), beat=lambda: beats.append(1))
    assert decoder is not None
    decoder.start_batch()
    results = [decoder.decode(framed(schema_id)) for schema_id in MADE_UP_IDS]

    assert all(isinstance(r, Malformed) and r.reason == "schema_unknown" for r in results)
    assert {r.error for r in results if isinstance(r, Malformed)} == {
        f"schema id {i}: {REGISTRY_UNAVAILABLE}" for i in MADE_UP_IDS
    }
    assert stalled.requests <= 2  # one lookup (and at most the client's own retry of it)
    assert len(beats) == 1  # the heartbeat beat after the one lookup that waited


def test_the_whole_process_shares_one_circuit(stalled: FakeRegistry) -> None:
    """A second decoder for the same registry (another reader schema, replay) sees it open."""
    first = avro_decoder(settings_for(stalled.url))
    second = avro_decoder(settings_for(stalled.url))
    assert first is not None and second is not None
    first.start_batch()
    second.start_batch()
    assert isinstance(first.decode(framed(2_000)), Malformed)
    before = stalled.requests
    assert isinstance(second.decode(framed(KNOWN_ID)), Malformed)  # blocked at once: no request
    assert stalled.requests == before


def test_a_slow_registry_is_asked_a_bounded_number_of_times_per_batch() -> None:
    """A registry that answers, slowly, 404 for every made-up id: the circuit stays closed, and
    the batch's budget stops asking after MAX_FETCHES_PER_BATCH lookups; the next batch asks again."""
    with fake_registry(stall_s=0.05) as slow:
        decoder = avro_decoder(settings_for(slow.url, timeout_ms=5_000))
        assert decoder is not None
        decoder.start_batch()
        first = [decoder.decode(framed(i)) for i in MADE_UP_IDS]
        assert slow.requests == MAX_FETCHES_PER_BATCH
        errors = [r.error for r in first if isinstance(r, Malformed)]
        assert len(errors) == len(MADE_UP_IDS)
        assert errors[:MAX_FETCHES_PER_BATCH] == [f"schema id {i} is unknown" for i in MADE_UP_IDS[:16]]
        assert set(errors[MAX_FETCHES_PER_BATCH:]) == {
            f"schema id {i}: {LOOKUPS_SPENT}" for i in MADE_UP_IDS[MAX_FETCHES_PER_BATCH:]
        }
        decoder.start_batch()
        assert isinstance(decoder.decode(framed(5_000)), Malformed)
        assert slow.requests == MAX_FETCHES_PER_BATCH + 1


def test_the_batch_wait_is_bounded_even_when_each_lookup_is_within_its_timeout() -> None:
    """Each lookup answers within the call limit, but the batch may wait only so long in total:
    the lookup that would run past it is cut short (no verdict on the registry: the circuit
    stays closed) and the ids after it are not asked."""
    with fake_registry(stall_s=0.4) as slow:
        circuit = RegistryCircuit(registry_lookup(registry_client({"url": slow.url, "timeout": 5})), 5.0)
        budget = FetchBudget(max_fetches=100, max_wait_s=1.0)
        decoder = AvroDecoder(circuit, budget=budget)
        decoder.start_batch()
        results = [decoder.decode(framed(i)) for i in MADE_UP_IDS[:20]]
        assert all(isinstance(r, Malformed) and r.reason == "schema_unknown" for r in results)
        assert 2 <= budget.fetches <= 3  # 0.4 s each within 1.0 s: two answered, the third cut short
        assert slow.requests == budget.fetches
        assert circuit.failures == 0  # cut short by the budget is no verdict on the registry


def test_the_circuit_pauses_doubles_and_closes_when_the_registry_answers() -> None:
    """A registry on a closed port (connection refused): each failure opens the circuit for
    longer; once the registry is back, the first lookup after the pause closes it."""
    clock = FakeClock()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    circuit = RegistryCircuit(
        registry_lookup(registry_client({"url": url, "timeout": 2, "max.retries": 0})), 4.0, clock
    )
    decoder = AvroDecoder(circuit, clock=clock)

    assert isinstance(decoder.decode(framed(KNOWN_ID)), Malformed)
    assert circuit.requests == 1 and circuit.is_open
    clock.now += RETRY_AFTER_S - 0.1
    assert circuit.is_open
    clock.now += 0.2
    assert not circuit.is_open  # half-open: the next lookup goes through
    assert isinstance(decoder.decode(framed(KNOWN_ID)), Malformed)
    assert circuit.requests == 2
    clock.now += 2 * RETRY_AFTER_S - 0.1
    assert circuit.is_open  # the second pause is twice the first
    clock.now += 0.2
    assert not circuit.is_open
    for _ in range(10):
        clock.now += CIRCUIT_MAX_OPEN_S + 0.1
        decoder.decode(framed(KNOWN_ID))
    clock.now += CIRCUIT_MAX_OPEN_S + 0.1
    assert not circuit.is_open  # the pause stops growing at CIRCUIT_MAX_OPEN_S

    with fake_registry({KNOWN_ID: json.dumps(load_schema_json())}) as back:
        circuit_back = RegistryCircuit(
            registry_lookup(registry_client({"url": back.url, "timeout": 2})), 4.0, clock
        )
        circuit_back._failures, circuit_back._open_until = 3, clock.now + 1.0  # as if it had failed
        again = AvroDecoder(circuit_back, clock=clock)
        assert isinstance(again.decode(framed(KNOWN_ID)), Malformed)  # still open: not asked
        assert back.requests == 0
        clock.now += 1.1
        assert isinstance(again.decode(framed(KNOWN_ID + 1)), Malformed)  # answered 404: closed
        assert back.requests == 1 and not circuit_back.is_open
        clock.now += RETRY_AFTER_S + 0.1  # the id blocked while open is asked again
        assert isinstance(again.decode(framed(KNOWN_ID)), Event)


def test_one_request_at_a_time_while_a_given_up_lookup_is_pending(stalled: FakeRegistry) -> None:
    """After the pause, a lookup still hanging on the stalled server holds the circuit: no
    second request piles onto a registry that has not answered the first."""
    clock = FakeClock()
    circuit = RegistryCircuit(
        registry_lookup(registry_client({"url": stalled.url, "timeout": 60})), 0.2, clock
    )
    decoder = AvroDecoder(circuit, clock=clock)
    assert isinstance(decoder.decode(framed(3_000)), Malformed)
    clock.now += RETRY_AFTER_S + 0.1
    assert circuit.is_open  # the first request is still pending on the server
    assert isinstance(decoder.decode(framed(3_001)), Malformed)
    assert circuit.requests == 1 and stalled.requests == 1
    clock.now += CIRCUIT_MAX_OPEN_S  # a request that never ends is let go after the longest pause
    assert not circuit.is_open
    for sent in range(2, MAX_LET_GO + 1):  # each let go holds a thread: only so many are left behind
        assert isinstance(decoder.decode(framed(3_000 + sent)), Malformed)
        assert circuit.requests == sent
        clock.now += CIRCUIT_MAX_OPEN_S
    assert circuit.is_open
    assert isinstance(decoder.decode(framed(3_100)), Malformed)
    assert circuit.requests == MAX_LET_GO and stalled.requests == MAX_LET_GO


def test_whatever_schema_the_registry_answers_with_is_a_verdict_never_an_outage() -> None:
    """Producers can often register schemas: one nested too deep to parse, one that is not
    JSON, or a recursive one blocks its own records as schema_incompatible, and leaves the
    circuit closed for everyone else's ids."""
    depth = 5_000
    deep = '{"type": "record", "name": "R", "fields": [{"name": "x", "type": '
    deep += '{"type": "array", "items": ' * depth + '"int"' + "}" * depth + "}]}"
    recursive = {"type": "record", "name": "N", "fields": [{"name": "n", "type": ["null", "N"]}]}
    schemas = {21: deep, 22: "{not json", 23: json.dumps(recursive), KNOWN_ID: json.dumps(load_schema_json())}
    with fake_registry(schemas) as registry:
        circuit = RegistryCircuit(registry_lookup(registry_client({"url": registry.url, "timeout": 5})), 10.0)
        decoder = AvroDecoder(circuit)
        for schema_id in (21, 22, 23):
            result = decoder.decode(framed(schema_id))
            assert isinstance(result, Malformed) and result.reason == "schema_incompatible", result
        assert circuit.failures == 0 and not circuit.is_open
        assert isinstance(decoder.decode(framed(KNOWN_ID)), Event)


def test_an_open_circuit_logs_once_not_once_per_id(
    stalled: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    decoder = avro_decoder(settings_for(stalled.url))
    assert decoder is not None
    decoder.start_batch()
    with caplog.at_level("INFO", logger="streams.runtime.kafka.avro_input"):
        for schema_id in MADE_UP_IDS:
            decoder.decode(framed(schema_id))
    assert len(caplog.records) <= 2  # the lookup that failed, and the circuit opening


@pytest.mark.parametrize("engine", ["kafka", "faust"])
def test_healthz_outlasts_the_longest_batch_of_registry_lookups(engine: str) -> None:
    """With a long registry timeout a batch may wait longer than the default silence limit:
    `/healthz` allows for it on both engines (built here without connecting anywhere)."""
    from streams.core.rules.loader import load_ruleset
    from streams.runtime.kafka.avro_input import registry_wait_per_batch_s
    from streams.runtime.ops.startup import keyed_setup
    from tests.conftest import RULES_DIR

    settings = Settings(
        bootstrap_servers="127.0.0.1:1",
        input_formats={"internal.events": "avro"},
        schema_registry_url="http://127.0.0.1:1",
        schema_registry_timeout_ms=60_000,
        dev=True,
        engine=engine,
        faust_accepted_gaps=["P8"],
    )
    setup = keyed_setup(settings, load_ruleset(RULES_DIR))
    if engine == "kafka":
        from streams.runtime.pipeline.job import GuardJob

        heartbeat = GuardJob(settings, setup.ruleset, payload=setup.payload).heartbeat
    else:
        from streams.engines.faust_app import FaustGuard

        heartbeat = FaustGuard(setup).heartbeat
    assert registry_wait_per_batch_s(settings) == 120.0
    assert heartbeat.max_silence_s > 120.0


def test_the_open_circuit_is_a_gauge_read_at_scrape_time(stalled: FakeRegistry) -> None:
    from prometheus_client import generate_latest

    from streams.core.rules.loader import load_ruleset
    from streams.runtime.ops.startup import keyed_setup
    from streams.runtime.pipeline.job import GuardJob
    from tests.conftest import RULES_DIR

    settings = settings_for(stalled.url).model_copy(update={"dev": True})
    setup = keyed_setup(settings, load_ruleset(RULES_DIR))
    job = GuardJob(settings, setup.ruleset, payload=setup.payload)

    def scraped() -> bytes:
        return generate_latest(job.metrics.registry)

    assert b"partner_guard_schema_registry_open 0.0" in scraped()
    job.decider.start_batch()
    job.decider.decode(framed(4_000), "avro")
    assert b"partner_guard_schema_registry_open 1.0" in scraped()
