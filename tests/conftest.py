"""Shared fixtures: the shipped ruleset with fixed keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from streams.core.rules.loader import load_ruleset
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
