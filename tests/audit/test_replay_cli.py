"""`partner-guard replay` never says "all clear" when it checked nothing or the wrong thing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from streams.core.models import Decision
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import SourceRef, Withheld, blocked_input, blocked_record
from tests.conftest import ROOT, RULES_DIR

EVENT = {
    "event_id": "ev-1",
    "event_type": "title_selected",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-1",
    "context": {"country": "US"},
}


def _export(tmp_path: Path, digest: str) -> Path:
    source = SourceRef("internal.events", 0, 7, 1_795_000_000_000, b"acct-1", "json")
    shared = blocked_input(source, orjson.dumps(EVENT), None, "ev-1", PayloadProtector("full"))
    decision = Decision(
        partner="install-attribution",
        rule_id="install-attribution-v1",
        ruleset_digest=digest,
        event_id="ev-1",
        verdict="block",
        reasons=("event_type_not_allowed",),
    )
    _, value, _ = blocked_record([Withheld.of(decision)], shared, source, 900_000)
    path = tmp_path / "blocked.jsonl"
    path.write_bytes(value + b"\n")
    return path


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--no-git", "--verify-rules", str(RULES_DIR), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_an_unknown_partner_is_an_error_listing_the_valid_ones(tmp_path: Path) -> None:
    from streams.core.rules.loader import load_ruleset

    blocked = _export(tmp_path, load_ruleset(RULES_DIR).digest)
    result = _replay("--from-file", str(blocked), "--partner", "signup-conversion")
    assert result.returncode == 2
    assert (
        "--partner signup-conversion: unknown; valid: install-attribution, signup-conversions"
        in result.stderr
    )
    result = _replay("--from-file", str(blocked), "--reason", "consent_gcp")
    assert result.returncode == 2 and "consent_gpc" in result.stderr


def test_a_replay_that_selects_nothing_says_so_and_fails_unless_allowed(tmp_path: Path) -> None:
    from streams.core.rules.loader import load_ruleset

    blocked = _export(tmp_path, load_ruleset(RULES_DIR).digest)
    verified = _replay("--from-file", str(blocked))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    empty = _replay("--from-file", str(blocked), "--partner", "signup-conversions")
    assert empty.returncode == 4 and "no blocked record selected" in empty.stdout
    allowed = _replay("--from-file", str(blocked), "--partner", "signup-conversions", "--allow-empty")
    assert allowed.returncode == 0


def test_ruleset_not_found_says_where_it_looked_and_how_to_point_at_the_rules(tmp_path: Path) -> None:
    blocked = _export(tmp_path, "sha256:" + "0" * 64)
    report = tmp_path / "report.jsonl"
    result = _replay("--from-file", str(blocked), "--jsonl", str(report))
    assert result.returncode == 1
    line = orjson.loads(report.read_bytes().splitlines()[0])
    assert line["status"] == "ruleset_not_found"
    assert f"looked in {RULES_DIR}/" in line["why"] and "--verify-rules DIR or --git-dir REPO" in line["why"]
