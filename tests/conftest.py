"""Shared fixtures: the shipped ruleset with fixed keys, and a deliberately permissive rule."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from xdist.scheduler import LoadScopeScheduling

from streams.core.rules.loader import load_ruleset
from streams.core.rules.model import ALLOWED_EVENT_TYPES
from streams.core.rules.ruleset import Ruleset

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "rules"
TEST_KEYS = {"install-attribution": b"k" * 32, "signup-conversions": b"s" * 32}

# No test asserts on time: Hypothesis' per-example deadline would be one, and on a shared
# two-core machine it fails examples that are merely slow. Per-test settings still apply.
settings.register_profile("partner-guard", deadline=None)
settings.load_profile("partner-guard")


# `make test` runs pytest on xdist workers. Every test is a unit of work of its own, except
# the tests of these files: each group runs on one worker, one test after another, and starts
# first (the largest units go first).
ONE_WORKER_GROUPS = {
    # the fault scenarios: never two at once (SIGKILL loops, SIGSTOP past the session timeout,
    # black-holes longer than it), the crash loop the busiest of all
    "test_crash_loop.py": "fault-scenarios",
    "test_flaky_network.py": "fault-scenarios",
    "test_zombie.py": "fault-scenarios",
    "test_state_faults.py": "fault-scenarios",
    "test_logs_and_secrets.py": "fault-scenarios",
    # the Faust app keeps a data directory per consumer group, and these tests reuse names
    "test_faust.py": "faust-engine",
}


class GroupedScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no type hints
    """xdist scheduling: one test per unit of work, the files of `ONE_WORKER_GROUPS` one unit per
    group.

    (Not `--dist loadgroup`: with pytest 9, xdist 3.8 drops the group from the node ids it
    reports, and groups are silently ignored.)
    """

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        if path.endswith("test_matrix.py") and "[faust-" in nodeid:  # the matrix's Faust cells
            return ONE_WORKER_GROUPS["test_faust.py"]
        return ONE_WORKER_GROUPS.get(path.rsplit("/", 1)[-1], nodeid)


def pytest_configure(config: pytest.Config) -> None:
    """On the controller (or a run without xdist), before any worker starts: resolve the
    embedded broker's binary once, under its file lock. The path goes into the environment
    the workers inherit, so four workers starting brokers at once never copy it at once."""
    if not hasattr(config, "workerinput"):
        from streams.broker.embedded import broker_binary

        broker_binary()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupedScheduling:
    """The scheduler of every `-n` run (xdist's hook, called on the controller)."""
    return GroupedScheduling(config, log)


@pytest.fixture(scope="session")
def ruleset() -> Ruleset:
    """The shipped rules with fixed test keys."""
    return load_ruleset(RULES_DIR).with_keys(TEST_KEYS)


PERMISSIVE_HEADER = """\
partner: permissive
jurisdictions: [US, CA]
consent: {interest_based_ads: required, ad_cookies_on_web: not_required}
events:
"""


def permissive_ruleset(directory: Path, fields: str) -> Ruleset:
    """A rule `permissive` allowing every event type with `fields` (a YAML template with
    `{event_type}`), the shipped leak-scan vocabulary and a fixed key: projection made
    permissive, so a test sees what the leak scan alone stops."""
    shutil.copy(RULES_DIR / "_leak-scan.yaml", directory / "_leak-scan.yaml")
    body = "".join(fields.format(event_type=t) for t in sorted(ALLOWED_EVENT_TYPES))
    (directory / "permissive.yaml").write_text(PERMISSIVE_HEADER + body)
    return load_ruleset(directory).with_keys({"permissive": b"p" * 32})
