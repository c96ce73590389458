"""Shared fixtures: the shipped ruleset with fixed keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "rules"
TEST_KEYS = {"install-attribution": b"k" * 32, "signup-conversions": b"s" * 32}


@pytest.fixture(scope="session")
def ruleset() -> Ruleset:
    """The shipped rules with fixed test keys."""
    return load_ruleset(RULES_DIR).with_keys(TEST_KEYS)
