"""The Faust engine's start checks and metadata conversions (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faust
import pytest

from streams.core.errors import RefusalError
from streams.core.rules.loader import load_ruleset
from streams.engines.faust_app import _timestamp_ms, check_promises
from streams.engines.faust_auth import broker_credentials
from streams.runtime.config import load_settings
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
