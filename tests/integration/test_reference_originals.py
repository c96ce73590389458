"""`blocked_original: reference`: originals of inputs no rule can receive are fetched back for replay."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from streams import exitcodes
from streams.audit.source import SOURCE_EXPIRED, SOURCE_INVALID, SOURCE_MISMATCH, resolve_references
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

        future, forged = copy.deepcopy(references[0]), copy.deepcopy(references[1])
        future["source"]["offset"] += 1_000_000  # past the end: the topic never held it
        forged["original_sha256"] = "0" * 64
        exported = tmp_path / "altered.jsonl"
        exported.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in (future, forged)))

        resolve_references([future, forged], {"bootstrap.servers": broker.bootstrap})
        assert future.get(SOURCE_INVALID) and not future.get(SOURCE_EXPIRED)
        assert forged.get(SOURCE_MISMATCH) and forged["original_b64"] is None

        report = tmp_path / "altered-report.jsonl"
        result = run_cli(broker, "replay", "--from-file", str(exported), "--no-git", "--jsonl", str(report))
        assert result.returncode == 1  # the forged reference fails the run
        assert [r["status"] for r in read_jsonl(report)] == ["invalid_record", "mismatch"]

        # Positions outside anything the topic ever held are invalid records, never "past retention"
        # (that is only a position below its partition's log start), and they change the exit code.
        nowhere = []
        for change in (
            {"offset": references[2]["source"]["offset"] + 10**12},  # a future offset
            {"partition": 97},  # a partition the topic does not have
            {"topic": "no.such.topic"},  # a topic that does not exist
            {"offset": -2},  # not an offset at all (librdkafka's "beginning")
            {"offset": 2**63},  # past any offset Kafka can name
        ):
            view = copy.deepcopy(references[2])
            view["source"].update(change)
            nowhere.append(view)
        exported = tmp_path / "nowhere.jsonl"
        exported.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in nowhere))
        report = tmp_path / "nowhere-report.jsonl"
        result = run_cli(broker, "replay", "--from-file", str(exported), "--no-git", "--jsonl", str(report))
        assert result.returncode == exitcodes.REPLAY_INVALID_RECORDS, result.stdout + result.stderr
        rows = read_jsonl(report)
        assert [r["status"] for r in rows] == ["invalid_record"] * len(nowhere)
        whys = [r["why"] for r in rows]
        assert "past the end of the partition" in whys[0]
        assert "has no partition 97" in whys[1]
        assert "source topic 'no.such.topic' does not exist" in whys[2]
        assert whys[3:] == ["not a blocked record: source.offset"] * 2  # refused by its shape
