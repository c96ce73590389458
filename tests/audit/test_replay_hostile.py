"""`replay` on hostile blocked records: each one an `invalid_record`, never a crash."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import StateSnapshot
from streams.core.rules.ruleset import Ruleset
from streams.runtime.formats.payload import Keyring, PayloadProtector
from streams.runtime.formats.records import SourceRef, Withheld, blocked_input, blocked_record, partner_views
from tests.conftest import ROOT

KEYRING_TEXT = "k1:" + base64.b64encode(b"\x02" * 32).decode()
EVENT = orjson.dumps(
    {
        "event_id": "evt-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:00:00Z",
        "account_id": "acct-7",
        "device": {"platform": "android"},
        "context": {"country": "US"},
    }
)


def _blocked(ruleset: Ruleset, protector: PayloadProtector, snapshot: StateSnapshot) -> dict[str, Any]:
    """A genuine blocked record, as `run` writes it, for the first partner."""
    record = decode_json(EVENT)
    decision = decide(record, snapshot, ruleset)[0]
    assert not decision.forwarded
    source = SourceRef("internal.events", 0, 5, 1_795_000_000_000, b"acct-7", "json")
    shared = blocked_input(source, EVENT, snapshot, decision.event_id, protector)
    value = blocked_record([Withheld.of(decision)], shared, source, 900_000)[1]
    return partner_views(orjson.loads(value))[0]  # the view replay reads


def _replay(tmp_path: Path, lines: list[bytes], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    exported = tmp_path / "blocked.jsonl"
    exported.write_bytes(b"\n".join(lines) + b"\n")
    report = tmp_path / "report.jsonl"
    env = {**os.environ, "PARTNER_GUARD_PAYLOAD_KEYS": KEYRING_TEXT}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "replay",
            "--no-git",
            "--from-file",
            str(exported),
            "--jsonl",
            str(report),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = [orjson.loads(line) for line in report.read_bytes().splitlines()] if report.exists() else []
    return run.returncode, rows, run.stdout + run.stderr


@pytest.fixture
def genuine(ruleset: Ruleset) -> dict[str, Any]:
    return _blocked(ruleset, PayloadProtector("full"), StateSnapshot())


def test_hostile_records_are_invalid_and_the_report_is_still_written(
    genuine: dict[str, Any], tmp_path: Path
) -> None:
    hostile = [
        b"[]",
        b"null",
        b"\xff\xfe not json at all",
        orjson.dumps({**genuine, "partner": 5}),
        orjson.dumps({**genuine, "reasons": "consent_missing"}),
        orjson.dumps({**genuine, "source": {**genuine["source"], "offset": "7"}}),
        orjson.dumps({**genuine, "original_b64": "%%% not base64 %%%"}),
        orjson.dumps({**genuine, "reduced": True}),  # forged: the original is still there
        orjson.dumps({**genuine, "snapshot": {"consent": "everyone agreed"}}),
        orjson.dumps({**genuine, "payload_mode": "plain"}),
    ]
    far_future = orjson.dumps(
        {**genuine, "_timestamp_ms": 2**62, "source": {**genuine["source"], "timestamp_ms": 2**62}}
    )
    html = tmp_path / "report.html"
    code, rows, output = _replay(tmp_path, [orjson.dumps(genuine), far_future, *hostile], "--html", str(html))
    assert code == 3, output
    assert [r["status"] for r in rows] == ["match", "match"] + ["invalid_record"] * len(hostile)
    page = html.read_text()
    assert "No mismatch, but not verified: 10 invalid records. 2 of 12 selected records verified." in page
    assert "Traceback" not in output


def test_exit_codes_tell_mismatch_invalid_and_could_not_run_apart(
    genuine: dict[str, Any], tmp_path: Path
) -> None:
    assert _replay(tmp_path, [orjson.dumps(genuine)])[0] == 0
    tampered = orjson.dumps({**genuine, "reasons": ["kids_profile"]})
    assert _replay(tmp_path, [tampered])[0] == 1
    assert _replay(tmp_path, [tampered, b"null"])[0] == 1  # a mismatch outranks invalid records
    assert _replay(tmp_path, [orjson.dumps(genuine), b"null"])[0] == 3
    missing = tmp_path / "nowhere.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--no-git", "--from-file", str(missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_encrypted_mode_counts_only_the_ciphertext(ruleset: Ruleset, tmp_path: Path) -> None:
    keyring = Keyring.parse(KEYRING_TEXT)
    snapshot = StateSnapshot.model_validate(
        {"consent": [{"subject": "account:acct-7", "interest_based_ads": "denied"}]}
    )
    genuine = _blocked(ruleset, PayloadProtector("encrypted", keyring), snapshot)
    assert b"acct-7" not in orjson.dumps(genuine)
    planted = base64.b64encode(EVENT.replace(b"acct-7", b"acct-8")).decode()
    damaged = {**genuine, "ciphertext_b64": base64.b64encode(b"\x00" * 40).decode(), "original_b64": planted}
    beside = {**genuine, "original_b64": planted}
    code, rows, output = _replay(tmp_path, [orjson.dumps(r) for r in (genuine, damaged, beside)])
    assert [r["status"] for r in rows] == ["match", "mismatch", "mismatch"], output
    assert code == 1
