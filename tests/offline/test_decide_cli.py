"""`partner-guard decide`: the JSON Lines contract (docs/records.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from tests.conftest import RULES_DIR

KEYS_ENV = {
    "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "k" * 32,
    "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "s" * 32,
}
GOOD = {
    "event": {
        "event_id": "e-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:00:00Z",
        "account_id": "acct-1",
        "device": {"platform": "android", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "US"},
        "properties": {"campaign_id": "spring"},
    },
    "consent": [{"subject": "account:acct-1", "interest_based_ads": "granted"}],
}


def _decide(
    stdin: bytes, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "decide", "--rules", str(RULES_DIR), *args],
        input=stdin,
        capture_output=True,
        check=False,
        env={**os.environ, **(env or KEYS_ENV)},
    )


def test_garbage_gives_a_block_per_line_and_partner_and_exit_0() -> None:
    lines = [
        b"garbage",
        b"{",
        b"[]",
        b"42",
        b'{"event": "raw bytes"}',
        b'{"event": "{\\"event_id\\": \\"x\\", \\"event_type\\": \\"app_open\\", \\"event_time\\": 1}"}',
        b'{"event": {"event_id": 1}}',
        b'{"event": {"event_id": "x", "event_type": "app_open", "event_time": "yesterday"}}',
        b'{"event": {}, "consent": "nope"}',
        b"\xff\xfe\x00",
        b'{"event": null}',
        b'{"event": {"event_id": "x", "event_type": "app_open", "event_time": 1}, "stale": "yes"}',
    ]
    result = _decide(b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 2 * len(lines)
    assert all(d["verdict"] == "block" and d["reasons"] == ["malformed"] and d["record"] is None for d in out)
    assert [d["partner"] for d in out[:2]] == ["install-attribution", "signup-conversions"]


def test_output_contract_and_order() -> None:
    result = _decide(orjson.dumps(GOOD) + b"\n")
    assert result.returncode == 0, result.stderr
    first, second = (orjson.loads(line) for line in result.stdout.splitlines())
    assert list(first) == ["event_id", "partner", "verdict", "reasons", "record"]
    assert first["partner"] == "install-attribution" and first["verdict"] == "forward"
    assert first["record"]["campaign_id"] == "spring" and first["record"]["event_id"] != "e-1"
    assert second == {
        "event_id": "e-1",
        "partner": "signup-conversions",
        "verdict": "block",
        "reasons": ["event_type_not_allowed"],
        "record": None,
    }


def test_same_input_same_bytes() -> None:
    payload = orjson.dumps(GOOD) + b"\n"
    assert _decide(payload).stdout == _decide(payload).stdout


def test_missing_keys_refuse_start_unless_dev() -> None:
    env = {k: "" for k in KEYS_ENV}
    refused = _decide(orjson.dumps(GOOD) + b"\n", env=env)
    assert refused.returncode == 2
    assert b"PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION" in refused.stderr
    dev = _decide(orjson.dumps(GOOD) + b"\n", "--dev", env=env)
    assert dev.returncode == 0 and b"ephemeral" in dev.stderr
    assert b"k" * 32 not in dev.stderr
