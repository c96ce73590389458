"""`blocked_original: reference`: originals of inputs no rule can receive are fetched back for replay."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from streams.audit.source import SOURCE_EXPIRED, SOURCE_MISMATCH, resolve_references
from streams.broker.embedded import EmbeddedBroker
from tests.integration.kafka_helpers import read_blocked, read_jsonl, run_cli
from tests.integration.test_replay import _run_guard_once

pytestmark = pytest.mark.integration


def test_references_replay_exactly_and_report_what_the_source_no_longer_has(tmp_path: Path) -> None:
    with EmbeddedBroker.start(log_path=tmp_path / "tansu.log") as broker:
        _run_guard_once(broker, tmp_path, 600, {"PARTNER_GUARD_BLOCKED_ORIGINAL": "reference"})
        views = read_blocked(broker.bootstrap)
        references = [v for v in views if v["payload_mode"] == "reference"]
        copies = [v for v in views if v["payload_mode"] == "full"]
        assert references and copies  # content by reference; what some rule receives, as a copy
        assert all(
            v["original_b64"] is None and v["reasons"] == ["event_type_not_allowed"] for v in references
        )
        assert all(len(v["original_sha256"]) == 64 and v["original_size"] > 0 for v in references)

        report = tmp_path / "verify.jsonl"
        result = run_cli(broker, "replay", "--no-git", "--jsonl", str(report))
        assert result.returncode == 0, result.stdout + result.stderr
        rows = read_jsonl(report)
        assert len(rows) == len(views) and {r["status"] for r in rows} == {"match"}

        expired, forged = copy.deepcopy(references[0]), copy.deepcopy(references[1])
        expired["source"]["offset"] += 1_000_000  # past the end: as if retention had dropped it
        forged["original_sha256"] = "0" * 64
        exported = tmp_path / "altered.jsonl"
        exported.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in (expired, forged)))

        resolve_references([expired, forged], {"bootstrap.servers": broker.bootstrap})
        assert expired.get(SOURCE_EXPIRED) and expired["original_b64"] is None
        assert forged.get(SOURCE_MISMATCH) and forged["original_b64"] is None

        report = tmp_path / "altered-report.jsonl"
        result = run_cli(broker, "replay", "--from-file", str(exported), "--no-git", "--jsonl", str(report))
        assert result.returncode == 1  # the forged reference fails the run; the expired one is reported
        assert [r["status"] for r in read_jsonl(report)] == ["source_expired", "mismatch"]
