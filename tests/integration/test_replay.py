"""Auditor replay against blocked records written by a real guard run on the embedded broker."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from tests.integration.engine_scenarios import wait_consumed
from tests.integration.kafka_helpers import (
    ROOT,
    produce,
    read_blocked,
    read_jsonl,
    read_topic,
    run_cli,
    seed_population,
    start_guard,
)
from tests.report_dom import loading_attributes, sections

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "test-artifacts"
PAYLOAD_KEYS = "k1:" + base64.b64encode(b"\x01" * 32).decode()


def _run_guard_once(
    broker: EmbeddedBroker, tmp: Path, events: int, env: dict[str, str] | None = None
) -> None:
    generator = seed_population(broker.bootstrap, "internal.events", 400, 17)
    guard = start_guard(
        broker.bootstrap, tmp, "internal.events", "replay", transactional_id="guard-replay-0", extra_env=env
    )
    try:
        guard.wait_ready()
        produce(broker.bootstrap, "internal.events", generator.events(events))
        wait_consumed(guard, events)
    finally:
        assert guard.stop() == 0


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, Path]]:
    """A broker whose blocked topic holds a real run's records (payload mode full)."""
    tmp = tmp_path_factory.mktemp("replay")
    with EmbeddedBroker.start(log_path=tmp / "tansu.log") as broker:
        _run_guard_once(broker, tmp, 3000)
        yield broker, tmp


def test_verify_reproduces_every_decision(full_run: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = full_run
    report = tmp / "verify.jsonl"
    result = run_cli(broker, "replay", "--no-git", "--jsonl", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_jsonl(report)
    assert len(rows) > 2000 and {r["status"] for r in rows} == {"match"}


def test_verify_catches_a_tampered_record_and_an_unknown_ruleset(
    full_run: tuple[EmbeddedBroker, Path],
) -> None:
    broker, tmp = full_run
    exported = tmp / "export.jsonl"
    result = run_cli(broker, "replay", "export", "--out", str(exported))
    assert result.returncode == 0, result.stderr
    records = read_jsonl(exported)
    tampered_index = next(i for i, r in enumerate(records) if r["reasons"] == ["kids_profile"])
    records[tampered_index]["reasons"] = ["consent_gpc"]
    records[tampered_index + 1]["ruleset_digest"] = "sha256:" + "0" * 64
    tampered = tmp / "tampered.jsonl"
    tampered.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    report = tmp / "tampered-report.jsonl"
    result = run_cli(None, "replay", "--from-file", str(tampered), "--no-git", "--jsonl", str(report))
    assert result.returncode == 1
    rows = read_jsonl(report)
    bad = {(i, r["status"]) for i, r in enumerate(rows) if r["status"] != "match"}
    assert bad == {(tampered_index, "mismatch"), (tampered_index + 1, "ruleset_not_found")}
    assert "mismatch" in result.stdout
    # the line says which side is the record and which the recomputed decision
    assert "recorded reasons ['consent_gpc']; re-decided reasons ['kids_profile']" in result.stdout
    assert "1 record whose ruleset was not found (1 distinct digest)" in result.stdout


def test_filters(full_run: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = full_run
    out = tmp / "filtered.jsonl"
    assert (
        run_cli(
            broker,
            "replay",
            "export",
            "--out",
            str(out),
            "--partner",
            "signup-conversions",
            "--reason",
            "minor",
        ).returncode
        == 0
    )
    rows = read_jsonl(out)
    assert rows and all(r["partner"] == "signup-conversions" and "minor" in r["reasons"] for r in rows)
    assert run_cli(broker, "replay", "export", "--out", str(out), "--since", "2999-01-01").returncode == 0
    assert read_jsonl(out) == []
    assert (
        run_cli(
            broker,
            "replay",
            "export",
            "--out",
            str(out),
            "--until",
            "2999-01-01",
            "--rule",
            "install-attribution-v1",
        ).returncode
        == 0
    )
    assert read_jsonl(out) and all(r["rule_id"] == "install-attribution-v1" for r in read_jsonl(out))


def _rules_without_condition(tmp: Path) -> Path:
    proposed = tmp / "proposed-rules"
    if not proposed.exists():
        shutil.copytree(ROOT / "rules", proposed)
        text = (proposed / "install-attribution.yaml").read_text()
        (proposed / "install-attribution.yaml").write_text(
            "\n".join(line for line in text.splitlines() if not line.startswith("condition:")) + "\n"
        )
        tests = proposed / "tests"
        shutil.rmtree(tests)
    return proposed


def test_whatif_reports_exactly_what_a_rule_change_lets_through(
    full_run: tuple[EmbeddedBroker, Path],
) -> None:
    broker, tmp = full_run
    report = tmp / "whatif.jsonl"
    result = run_cli(
        broker, "replay", "--no-git", "--rules", str(_rules_without_condition(tmp)), "--jsonl", str(report)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_jsonl(report)
    newly = [r for r in rows if r["whatif"]["change"] == "newly_forwarded"]
    only_condition = [r for r in rows if r["recorded_reasons"] == ["rule_condition_false"]]
    assert newly and {(r["source"]["partition"], r["source"]["offset"]) for r in newly} == {
        (r["source"]["partition"], r["source"]["offset"]) for r in only_condition
    }
    assert all(r["partner"] == "install-attribution" for r in newly)
    # exactly which fields would leave: tv and web are not among the platform values, so never platform
    assert all("event_id" in r["whatif"]["fields"] and "platform" not in r["whatif"]["fields"] for r in newly)
    assert "newly_forwarded" in result.stdout


def test_rules_diff_shows_the_change(full_run: tuple[EmbeddedBroker, Path]) -> None:
    _, tmp = full_run
    sample = tmp / "sample.jsonl"
    tv_install = {
        "event": {
            "event_id": "tv-1",
            "event_type": "app_install",
            "event_time": "2026-11-28T10:00:00Z",
            "account_id": "a",
            "device": {"platform": "tv"},
            "context": {"country": "US"},
        },
        "consent": [{"subject": "account:a", "interest_based_ads": "granted"}],
    }
    sample.write_bytes(orjson.dumps(tv_install) + b"\n")
    result = run_cli(
        None, "rules", "diff", "rules", str(_rules_without_condition(tmp)), "--sample", str(sample)
    )
    assert result.returncode == 0, result.stderr
    assert "~ condition:" in result.stdout and "signup-conversions: unchanged" in result.stdout
    assert "1 decision(s) change" in result.stdout and '"verdict":"forward"' in result.stdout


def test_republish_twice_sends_each_record_once(full_run: tuple[EmbeddedBroker, Path]) -> None:
    broker, tmp = full_run
    proposed = str(_rules_without_condition(tmp))
    before = len(read_topic(broker.bootstrap, "partner.install-attribution.events"))
    dry = run_cli(broker, "replay", "--no-git", "--rules", proposed, "--republish", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would send" in dry.stdout
    assert len(read_topic(broker.bootstrap, "partner.install-attribution.events")) == before
    # a producer queue far smaller than the plan: republish waits for space, never BufferError
    small_queue = {"PARTNER_GUARD_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "2"}
    first = run_cli(broker, "replay", "--no-git", "--rules", proposed, "--republish", env=small_queue)
    assert first.returncode == 0, first.stdout + first.stderr
    sent = int(first.stdout.split("; sent ")[1].split(";")[0])
    assert sent > 2
    second = run_cli(broker, "replay", "--no-git", "--rules", proposed, "--republish")
    assert "; sent 0;" in second.stdout and f"already sent {sent}" in second.stdout, second.stdout[-600:]
    after = read_topic(broker.bootstrap, "partner.install-attribution.events")
    assert len(after) == before + sent
    assert sum(1 for _, _, h in after if dict(h).get("pg-republished") == b"1") == sent


def test_html_report_renders_in_chromium(full_run: tuple[EmbeddedBroker, Path]) -> None:
    """The report of a real run, one record tampered and one ruleset lost, as a browser shows it."""
    broker, tmp = full_run
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    exported = tmp / "report-export.jsonl"
    assert run_cli(broker, "replay", "export", "--out", str(exported)).returncode == 0
    records = read_jsonl(exported)
    tampered_index = next(i for i, r in enumerate(records) if r["reasons"] == ["kids_profile"])
    records[tampered_index]["reasons"] = ["consent_gpc"]
    records[tampered_index + 1]["ruleset_digest"] = "sha256:" + "0" * 64
    tampered = tmp / "report-tampered.jsonl"
    tampered.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    page = tmp / "report.html"
    proposed = _rules_without_condition(tmp)
    result = run_cli(
        None,
        "replay",
        "--from-file",
        str(tampered),
        "--no-git",
        "--html",
        str(page),
        "--rules",
        str(proposed),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    text = page.read_text()
    assert "<script" not in text and not loading_attributes(text)  # opens offline, runs nothing
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shown = sections(dom.stdout)
    total = len(records)
    header = shown["run"]
    assert f"Replayed file {tampered}" in header and f"{total:,} selected, withheld from" in header
    assert "sha256:" + "0" * 64 + ": 1 record (1 not found)" in header
    assert f"What-if ruleset --rules {proposed} (digest sha256:" in header and "by partner-guard" in header
    assert '<p id="verdict-line" class="verdict red">' in dom.stdout
    assert shown["verdict-line"] == (
        "1 mismatch: re-decided differently from the record. "
        "Also not verified: 1 record whose ruleset was not found (1 distinct digest). "
        f"{total - 2:,} of {total:,} selected records verified."
    )
    assert re.search(r"install-attribution app_install [1-9][\d,]* [a-z_, ]*event_id", shown["whatif"])
    partners = {r["partner"] for r in records}
    assert dom.stdout.count('<svg class="chart"') == len(partners)  # one small chart per partner
    examples = shown["examples"]
    assert (
        examples.index("1 mismatch")
        < examples.index("1 record whose ruleset was not found")
        < examples.index("Verified")
    )
    assert records[tampered_index]["event_id"] in shown["examples-mismatch"]
    # which questions the page answers: the partner topics were not read, so it says so
    questions = shown["questions"]
    assert "What did each partner receive" in questions and "Not answered" in questions
    assert 'does not mean "nothing leaked"' in questions
    assert "Not checked: the partner topics were not read" in shown["received"]
    # the dull reason is counted apart, every reason explained in one line, left-out rows counted
    dull = sum(1 for r in records if r["reasons"] == ["event_type_not_allowed"])
    assert f"Not charted: {dull:,} records blocked only for event_type_not_allowed" in shown["apart"]
    assert "event_type_not_allowed" not in re.sub(
        r"<h3.*?</h3>", "", shown["timeline"].split("Not charted")[0]
    )
    assert "consent_gpc" in shown["reasons"] and "the browser sent Global Privacy Control" in shown["reasons"]
    assert re.search(
        r"[\d,]+ more verified \(one example per partner and reasons shown\); all in --jsonl", examples
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "replay-report.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1280,2600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_encrypted_payloads_replay_with_the_key_only(tmp_path: Path) -> None:
    with EmbeddedBroker.start(log_path=tmp_path / "tansu.log") as broker:
        _run_guard_once(
            broker,
            tmp_path,
            600,
            {"PARTNER_GUARD_BLOCKED_PAYLOAD": "encrypted", "PARTNER_GUARD_PAYLOAD_KEYS": PAYLOAD_KEYS},
        )
        blocked = read_blocked(broker.bootstrap)
        assert blocked and all(b["original_b64"] is None and b["ciphertext_b64"] for b in blocked)
        assert all(b["key_id"] == "k1" and b["payload_mode"] == "encrypted" for b in blocked)
        with_key = tmp_path / "with-key.jsonl"
        result = run_cli(
            broker,
            "replay",
            "--no-git",
            "--jsonl",
            str(with_key),
            env={"PARTNER_GUARD_PAYLOAD_KEYS": PAYLOAD_KEYS},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert {r["status"] for r in read_jsonl(with_key)} == {"match"}
        without = tmp_path / "without-key.jsonl"
        result = run_cli(
            broker, "replay", "--no-git", "--jsonl", str(without), env={"PARTNER_GUARD_PAYLOAD_KEYS": ""}
        )
        assert {r["status"] for r in read_jsonl(without)} == {"unverifiable"}
        exported = tmp_path / "enc.jsonl"
        run_cli(broker, "replay", "export", "--out", str(exported))
        records = read_jsonl(exported)
        records[0]["ciphertext_b64"] = base64.b64encode(b"\x00" * 40).decode()
        exported.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        result = run_cli(
            None,
            "replay",
            "--no-git",
            "--from-file",
            str(exported),
            env={"PARTNER_GUARD_PAYLOAD_KEYS": PAYLOAD_KEYS},
        )
        assert result.returncode == 1  # a tampered ciphertext is a mismatch, not a pass


def test_redacted_payloads_hide_tagged_fields(tmp_path: Path) -> None:
    with EmbeddedBroker.start(log_path=tmp_path / "tansu.log") as broker:
        _run_guard_once(
            broker,
            tmp_path,
            400,
            {"PARTNER_GUARD_BLOCKED_PAYLOAD": "redacted", "PARTNER_GUARD_PAYLOAD_KEYS": PAYLOAD_KEYS},
        )
        raw_blocked = read_topic(broker.bootstrap, "guard.blocked")
        for key, value, _ in raw_blocked:  # identifiers are keyed hashes everywhere, not only in the payload
            assert b"acct-" not in (key or b"") + (value or b"") and b"dev-" not in (value or b"")
        blocked = read_blocked(broker.bootstrap)
        redacted = [b["original_redacted"] for b in blocked if b.get("original_redacted")]
        assert redacted and all(b["original_b64"] is None for b in blocked)
        text = orjson.dumps(redacted).decode()
        assert (
            "@" not in text and "acct-" not in text and "example.com" not in text and "Stranger" not in text
        )
        events = [r for r in redacted if "event_type" in r]  # some malformed inputs are objects too
        assert events and all(str(r["event_id"]).startswith("redacted:") for r in events)
        assert any(r.get("context", {}).get("country") for r in events)  # untagged attributes stay readable
        report = tmp_path / "redacted.jsonl"
        result = run_cli(broker, "replay", "--no-git", "--jsonl", str(report))
        assert result.returncode == 0
        assert {r["status"] for r in read_jsonl(report)} == {"unverifiable"}


def test_republish_sends_only_verified_originals_once(tmp_path: Path) -> None:
    """Hand-written blocked records never reach a partner; duplicates within a run go once."""
    with EmbeddedBroker.start(log_path=tmp_path / "tansu.log") as broker:
        _run_guard_once(broker, tmp_path, 600)
        exported = tmp_path / "export.jsonl"
        assert run_cli(broker, "replay", "export", "--out", str(exported)).returncode == 0
        genuine = [
            {k: v for k, v in r.items() if not k.startswith("_")}
            for r in read_jsonl(exported)
            if r["reasons"] == ["rule_condition_false"] and r["partner"] == "install-attribution"
        ]
        assert genuine
        real = genuine[0]
        event = orjson.loads(base64.b64decode(real["original_b64"]))
        planted = orjson.dumps({**event, "event_id": "planted-by-hand"})
        forged_payload = {  # self-consistent, verifies, but not what is at its source offset
            **real,
            "original_b64": base64.b64encode(planted).decode(),
            "original_sha256": hashlib.sha256(planted).hexdigest(),
            "original_size": len(planted),
        }
        made_up_offset = {**real, "source": {**real["source"], "offset": 1_000_000_000}}
        not_verified = {
            **real,
            "source": {**real["source"], "offset": 1_000_000_001},
            "reasons": ["consent_gpc"],
        }
        hand_written = [real, real, forged_payload, made_up_offset, not_verified]
        produce(
            broker.bootstrap,
            "guard.blocked",
            [KeyedRecord(None, orjson.dumps(r)) for r in hand_written],
        )
        before = len(read_topic(broker.bootstrap, "partner.install-attribution.events"))
        proposed = str(_rules_without_condition(tmp_path))
        first = run_cli(broker, "replay", "--no-git", "--rules", proposed, "--republish")
        assert first.returncode == 1, first.stdout + first.stderr  # the not-verified record is a mismatch
        sent = int(first.stdout.split("; sent ")[1].split(";")[0])
        assert sent == len(genuine)  # every genuine candidate, once, despite the two copies of one
        assert "duplicates 2" in first.stdout  # the two genuine copies, whichever is read first
        # the forged payload (same source, other bytes) and the made-up offset
        assert "original not at its source 2" in first.stdout and "not verified 1" in first.stdout
        after = read_topic(broker.bootstrap, "partner.install-attribution.events")
        assert len(after) == before + sent
