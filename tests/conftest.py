"""Shared fixtures: the shipped ruleset with fixed keys, and a deliberately permissive rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import settings

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
