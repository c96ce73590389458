"""Finding the ruleset that decided a record, by digest: given directories, then git history.

A ruleset's digest covers its rules, its leak-scan vocabulary (`rules/_leak-scan.yaml`) and
the privacy tags of the event schema it was checked against. A past commit is therefore
loaded whole: its `rules/` (vocabulary included) together with the event schema the same
commit held, so records decided before a schema change still find their ruleset after it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import EVENT_SCHEMA_FILE, privacy_tags_of

RULES_PATH = "rules"
SCHEMA_PATH = f"schemas/{EVENT_SCHEMA_FILE}"
HISTORY_PATHS = (RULES_PATH, SCHEMA_PATH)  # a commit that changes either makes a new digest


def with_replay_keys(ruleset: Ruleset) -> Ruleset:
    """The ruleset with random partner keys.

    Blocked decisions never depend on key values (pseudonyms are only computed once every
    gate passed, and the leak scan ignores hex digests), so replay needs keys, not the keys.
    """
    return ruleset.with_keys({partner: secrets.token_bytes(32) for partner in ruleset.partners})


def schema_at_ref(repo: Path, ref: str) -> dict[str, Any] | None:
    """The event schema (parsed JSON) as it was at a git ref.

    None when that commit holds no readable schema: its rules are then checked against the
    shipped schema, and the digest tells whether that was the one.
    """
    shown = subprocess.run(
        ["git", "-C", str(repo), "show", f"{ref}:{SCHEMA_PATH}"], capture_output=True, check=False
    )
    if shown.returncode != 0:
        return None
    try:
        schema = json.loads(shown.stdout)
        privacy_tags_of(schema)  # readable: a record schema whose fields have names
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return schema if isinstance(schema, dict) else None


def is_git_ref(repo: Path, ref: str) -> bool:
    """True when `ref` names a commit in the repository at `repo`."""
    verified = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return verified.returncode == 0


def ruleset_at_ref(repo: Path, ref: str, workdir: Path) -> Ruleset:
    """Load `rules/` as it was at a git ref (commit, tag, branch), with that ref's event schema."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref, RULES_PATH], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise RulesetError([])  # no such ref or no rules there
    target = workdir / ref.replace("/", "_")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return with_replay_keys(load_ruleset(target / RULES_PATH, schema_at_ref(repo, ref)))


class RulesetLibrary:
    """Rulesets by digest, loaded lazily from directories and the repository's history."""

    def __init__(self, directories: list[Path], repo: Path | None = None, max_commits: int = 200) -> None:
        self._directories = list(directories)
        self._repo = repo
        self._max_commits = max_commits
        self._by_digest: dict[str, Ruleset] = {}
        self._history_loaded = False
        self._tmp = tempfile.TemporaryDirectory(prefix="partner-guard-rulesets-")
        for directory in self._directories:
            try:
                ruleset = load_ruleset(directory)
            except RulesetError:
                continue
            self._by_digest.setdefault(ruleset.digest, with_replay_keys(ruleset))

    def _load_history(self) -> None:
        self._history_loaded = True
        if self._repo is None:
            return
        log = subprocess.run(
            [
                "git",
                "-C",
                str(self._repo),
                "log",
                f"-{self._max_commits}",
                "--format=%H",
                "--",
                *HISTORY_PATHS,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        for commit in log.stdout.split():
            try:
                ruleset = ruleset_at_ref(self._repo, commit, Path(self._tmp.name))
            except RulesetError:
                continue
            self._by_digest.setdefault(ruleset.digest, with_replay_keys(ruleset))

    def known(self) -> list[Ruleset]:
        """Every ruleset the library can find (the git history is loaded for this)."""
        if not self._history_loaded:
            self._load_history()
        return list(self._by_digest.values())

    def searched(self) -> str:
        """Where the library looks for rulesets, for messages that say where it looked."""
        places = [f"{d}/" for d in self._directories]
        if self._repo is not None:
            places.append(
                f"rules/ with {SCHEMA_PATH} in the last {self._max_commits} commits of {self._repo.resolve()}"
            )
        return "; ".join(places) or "nowhere"

    def find(self, digest: str) -> Ruleset | None:
        """The ruleset with this digest, or None."""
        if digest not in self._by_digest and not self._history_loaded:
            self._load_history()
        return self._by_digest.get(digest)
