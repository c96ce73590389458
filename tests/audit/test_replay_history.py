"""Replay finds past rulesets in git history together with the schema and vocabulary of their commit.

A ruleset's digest covers the event schema's privacy tags and the leak-scan vocabulary, so
a record decided before a schema change must still find, and reproduce under, the ruleset
of its commit after the change.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from streams.audit.replay import replay
from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import decode_avro, decode_json, encode_avro
from streams.core.decide import decide
from streams.core.models import Decision, Event, StateSnapshot
from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import load_schema_json
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import SourceRef, Withheld, blocked_input, blocked_record, partner_views
from tests.conftest import RULES_DIR, TEST_KEYS

PARTNER = "install-attribution"
OLD_TITLE = "Spring Fling"  # in the vocabulary of the first commit only
EVENT = {
    "event_id": "hist-1",
    "event_type": "app_install",
    "event_time": "2026-11-28T10:00:00Z",
    "account_id": "acct-hist",
    "device": {"platform": "android", "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc"},
    "context": {"country": "US"},
    "properties": {"campaign_id": "spring-fling"},
}
SNAPSHOT = StateSnapshot.model_validate(
    {"consent": [{"subject": "account:acct-hist", "interest_based_ads": "granted"}]}
)


def _old_schema(tag: str = "none") -> dict[str, Any]:
    """The schema before the change: one more tagged property, later removed."""
    schema = copy.deepcopy(load_schema_json())
    properties = next(f for f in schema["fields"] if f["name"] == "properties")
    record = next(t for t in properties["type"] if isinstance(t, dict))
    record["fields"].append(
        {"name": "promo_code", "type": ["null", "string"], "default": None, "privacy": tag}
    )
    return schema


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True,
        capture_output=True,
    )


def _repo_with_a_schema_change(repo: Path) -> Path:
    """Commit 1: the shipped rules, a vocabulary with one more title, the old schema.
    Commit 2 changes only the schema (the property is retagged content).
    Commit 3: the shipped vocabulary and schema (the property is gone)."""
    repo.mkdir()
    _git(repo, "init", "-q")
    shutil.copytree(RULES_DIR, repo / "rules", ignore=shutil.ignore_patterns("tests"))
    vocabulary = repo / "rules" / "_leak-scan.yaml"
    shipped_vocabulary = vocabulary.read_text()
    vocabulary.write_text(shipped_vocabulary.replace("title_names:\n", f"title_names:\n  - {OLD_TITLE}\n", 1))
    (repo / "schemas").mkdir()
    schema = repo / "schemas" / "internal_event.avsc"
    schema.write_text(json.dumps(_old_schema(), indent=2))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "rules and schema as they were")
    schema.write_text(json.dumps(_old_schema("content"), indent=2))
    _git(repo, "commit", "-q", "-am", "schema change only: promo_code is content")
    vocabulary.write_text(shipped_vocabulary)
    schema.write_text(json.dumps(load_schema_json(), indent=2))
    _git(repo, "commit", "-q", "-am", "schema change: promo_code removed; vocabulary change")
    return repo


def _decided_under(
    ruleset: Ruleset, avro_schema: dict[str, Any] | None = None
) -> tuple[Decision, dict[str, Any]]:
    """The blocked record (one partner's view) the job of that commit wrote (its input JSON,
    or Avro written under `avro_schema`, which was then the guard's own)."""
    if avro_schema is None:
        raw, event = orjson.dumps(EVENT), decode_json(orjson.dumps(EVENT))
    else:
        written = {**EVENT, "properties": {**EVENT["properties"], "promo_code": "autumn"}}  # type: ignore[dict-item]
        raw = encode_avro(written, fastavro.parse_schema(avro_schema), 1)
        event = decode_avro(raw, fastavro.parse_schema(avro_schema))
    assert isinstance(event, Event)
    decision = next(d for d in decide(event, SNAPSHOT, ruleset) if d.partner == PARTNER)
    source = SourceRef(
        "internal.events", 0, 3, 1_795_000_000_000, b"acct-hist", "json" if avro_schema is None else "avro"
    )
    shared = blocked_input(source, raw, SNAPSHOT, "hist-1", PayloadProtector("full"))
    _, value, _ = blocked_record([Withheld.of(decision)], shared, source, 900_000)
    return decision, next(v for v in partner_views(orjson.loads(value)) if v["partner"] == PARTNER)


def _rules_then(repo: Path, ref: str, schema: dict[str, Any]) -> Ruleset:
    """The ruleset the job ran with at `ref`: that commit's rules, checked against its schema."""
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", ref, "--", "rules"], check=True)
    try:
        return load_ruleset(repo / "rules", schema).with_keys(TEST_KEYS)
    finally:
        subprocess.run(["git", "-C", str(repo), "checkout", "-q", "HEAD", "--", "rules"], check=True)


@pytest.mark.parametrize(
    ("ref", "tag"), [("HEAD~2", "none"), ("HEAD~1", "content")], ids=["rules-commit", "schema-only-commit"]
)
def test_a_record_decided_before_a_schema_change_verifies_after_it(
    tmp_path: Path, ref: str, tag: str
) -> None:
    repo = _repo_with_a_schema_change(tmp_path / "repo")
    then = _rules_then(repo, ref, _old_schema(tag))
    now = load_ruleset(repo / "rules").with_keys(TEST_KEYS)
    assert then.digest != now.digest and now.digest == load_ruleset(RULES_DIR).digest
    decision, blocked = _decided_under(then)
    # the old vocabulary decided it: the campaign reads as a title only there
    assert decision.verdict == "block" and decision.reasons == ("leak_detected",)
    assert next(
        d for d in decide(decode_json(orjson.dumps(EVENT)), SNAPSHOT, now) if d.partner == PARTNER
    ).forwarded

    result = replay([blocked], RulesetLibrary([repo / "rules"], repo), None)

    [outcome] = result.outcomes
    assert (outcome.status, outcome.why) == ("match", "")


def test_without_history_the_record_is_reported_not_found_never_matched(tmp_path: Path) -> None:
    repo = _repo_with_a_schema_change(tmp_path / "repo")
    _, blocked = _decided_under(_rules_then(repo, "HEAD~2", _old_schema()))
    [outcome] = replay([blocked], RulesetLibrary([RULES_DIR], None), None).outcomes
    assert outcome.status == "ruleset_not_found"


def test_an_avro_record_is_read_into_the_schema_of_the_commit_that_decided_it(tmp_path: Path) -> None:
    repo = _repo_with_a_schema_change(tmp_path / "repo")
    old = _old_schema()
    decision, blocked = _decided_under(_rules_then(repo, "HEAD~2", old), avro_schema=old)
    assert decision.reasons == ("leak_detected",)  # the body carries promo_code: today's schema lacks it

    [outcome] = replay([blocked], RulesetLibrary([RULES_DIR], repo), None).outcomes

    assert (outcome.status, outcome.why) == ("match", "")


def test_rules_diff_against_a_commit_shows_its_schema_tags_and_vocabulary(tmp_path: Path) -> None:
    repo = _repo_with_a_schema_change(tmp_path / "repo")
    diff = subprocess.run(
        [sys.executable, "-m", "streams", "rules", "diff", "HEAD~1", "rules"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert lines[0].endswith(f"-> {load_ruleset(RULES_DIR).digest}")
    assert '  - schema_tags.properties.promo_code: "content"' in lines
    assert any(line.startswith(f'  ~ leak_scan.title_names: ["{OLD_TITLE}",') for line in lines)
