"""The Faust engine's start checks and metadata conversions (no broker)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import faust
import pytest

from streams.core.errors import RefusalError
from streams.core.rules.loader import load_ruleset
from streams.engines.faust_app import FaustGuard, _timestamp_ms, check_promises, consumer_lag
from streams.engines.faust_auth import broker_credentials
from streams.runtime.config import load_settings
from streams.runtime.ops.metrics import Heartbeat
from streams.runtime.ops.startup import StartupError, keyed_setup, prepare

ROOT = Path(__file__).resolve().parents[2]


def test_at_least_once_refuses_without_the_p8_acknowledgement() -> None:
    settings = load_settings(bootstrap_servers="b:9092", engine="faust")
    with pytest.raises(StartupError, match="P8"):
        check_promises(settings)


def test_at_least_once_starts_with_p8_acknowledged_and_exactly_once_needs_none() -> None:
    check_promises(load_settings(bootstrap_servers="b:9092", faust_accepted_gaps=["P8"]))
    check_promises(load_settings(bootstrap_servers="b:9092", faust_processing_guarantee="exactly_once"))


def test_acknowledged_gaps_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNER_GUARD_FAUST_ACCEPTED_GAPS", "P8")
    assert load_settings(bootstrap_servers="b:9092").faust_accepted_gaps == ["P8"]
    monkeypatch.setenv("PARTNER_GUARD_FAUST_ACCEPTED_GAPS", "P1")
    with pytest.raises(Exception, match="faust_accepted_gaps"):
        load_settings(bootstrap_servers="b:9092")


def test_security_properties_become_faust_credentials() -> None:
    assert broker_credentials({}) is None
    sasl = broker_credentials(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u"}
    )
    assert isinstance(sasl, faust.SASLCredentials) and sasl.mechanism.value == "SCRAM-SHA-512"
    assert sasl.username == "u" and sasl.ssl_context is None
    tls = broker_credentials({"security.protocol": "SSL"})
    assert isinstance(tls, faust.SSLCredentials)


@pytest.mark.parametrize(
    "kafka",
    [
        {"socket.keepalive.enable": "true"},  # not translated: would silently not apply
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"},
        {"security.protocol": "TLS"},
    ],
)
def test_untranslatable_properties_refuse_the_faust_engine(kafka: dict[str, str]) -> None:
    with pytest.raises(StartupError):
        broker_credentials(kafka)


def test_startup_refuses_a_missing_key_for_every_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION", "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS"):
        monkeypatch.delenv(name, raising=False)
    ruleset = load_ruleset(ROOT / "rules")
    with pytest.raises(RefusalError, match="key"):
        keyed_setup(load_settings(bootstrap_servers="b:9092", engine="faust"), ruleset)
    assert keyed_setup(load_settings(bootstrap_servers="b:9092", dev=True), ruleset).notices
    with pytest.raises(RefusalError, match="key"):  # `faust -A`, without a command line of ours
        prepare(None, bootstrap_servers="b:9092", rules_dir=ROOT / "rules", engine="faust")


@pytest.mark.parametrize(
    ("timestamp", "kind", "expected"),
    [
        (1795000000.123, 0, 1795000000123),
        (1795000000.123, 1, 1795000000123),
        (None, 0, None),
        (5.0, -1, None),
    ],
)
def test_faust_timestamps_back_to_epoch_ms(timestamp: float | None, kind: int, expected: int | None) -> None:
    assert _timestamp_ms(timestamp, kind) == expected


@pytest.mark.parametrize(
    ("env", "refusal"),
    [
        ({}, "faust_accepted_gaps"),  # at least once without P8 acknowledged
        ({"PARTNER_GUARD_FAUST_ACCEPTED_GAPS": "P8", "PARTNER_GUARD_WORKERS": "2"}, "--workers"),
        (
            {
                "PARTNER_GUARD_FAUST_ACCEPTED_GAPS": "P8",
                "PARTNER_GUARD_KAFKA_SOCKET_KEEPALIVE_ENABLE": "true",
            },
            "aiokafka",
        ),
    ],
)
def test_run_engine_faust_refuses_before_connecting(env: dict[str, str], refusal: str) -> None:
    """`run --engine faust` refuses what it cannot honour with exit 2, before any broker is asked."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")} | {
        "PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        **env,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "run",
            "--engine",
            "faust",
            "--dev",
            "--rules",
            str(ROOT / "rules"),
        ],
        env=environ,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"refusing to start" in result.stderr and refusal.encode() in result.stderr


T0, T1, T2 = ("in", 0), ("in", 1), ("in", 2)


def test_consumer_lag_counts_from_the_next_offset_to_decide() -> None:
    # decided up to 100 of a listed end of 400; fetched to 350 (a prefetch is not decided)
    assert consumer_lag({T0: 400}, {T0: 350}, {T0: 100}) == {T0: 300}
    # nothing decided there yet: the fetch position is the next offset to decide
    assert consumer_lag({T0: 400}, {T0: 350}, {}) == {T0: 50}
    assert consumer_lag({T0: 400}, {T0: 400}, {T0: 400}) == {T0: 0}


def test_consumer_lag_trusts_the_fetch_position_over_a_short_listed_end() -> None:
    """The embedded broker lists the last record batch's base offset + 1 as the end: 1 for a
    topic produced in one batch. What the consumer has fetched is in the log, so it bounds the end."""
    assert consumer_lag({T0: 1}, {T0: 340}, {T0: 1}) == {T0: 339}
    assert consumer_lag({T0: None}, {T0: 340}, {T0: 40}) == {T0: 300}


def test_consumer_lag_leaves_out_what_it_cannot_know() -> None:
    lag = consumer_lag({T0: 10, T1: 10, T2: 10}, {T0: None, T1: -1, T2: 5}, {T2: 7})
    assert lag == {T2: 3}
    assert consumer_lag({T0: 10}, {T0: 12}, {T0: 20}) == {T0: 0}  # never negative


class _IdleReader:
    """A state reader with nothing new to apply."""

    def poll(self) -> int:
        return 0


def test_faust_heartbeat_is_beaten_by_the_idle_timer_only_between_batches() -> None:
    """While a batch runs, only the batch beats `/healthz`: a batch stuck outside its watched
    sends (the state catch-up) goes silent, as the kafka engine's loop does; between batches
    the idle timer keeps the worker alive. (No broker: the app is built, never started.)"""
    settings = load_settings(bootstrap_servers="127.0.0.1:1", dev=True, faust_accepted_gaps=["P8"])
    guard = FaustGuard(keyed_setup(settings, load_ruleset(ROOT / "rules")))
    now = [0.0]
    guard.heartbeat = Heartbeat(max_silence_s=10.0, clock=lambda: now[0])
    guard.state._reader = _IdleReader()  # type: ignore[assignment]  # loaded, nothing to apply
    guard._loaded, guard._last_gauges = True, time.monotonic()  # gauges not due

    guard._in_batch = True
    now[0] = 11.0
    asyncio.run(guard._keep_state_current())
    assert not guard.heartbeat.alive()  # the timer did not beat for a batch in progress

    guard._in_batch = False
    asyncio.run(guard._keep_state_current())
    assert guard.heartbeat.alive()
