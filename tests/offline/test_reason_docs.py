"""docs/reason-codes.md is generated from the one table of reason explanations in the code."""

from __future__ import annotations

from streams.core.reasons import EXPLANATIONS, Reason, explain
from streams.offline.reasondoc import END, START, reason_table, with_table
from tests.conftest import ROOT


def test_every_reason_has_one_plain_line() -> None:
    assert set(EXPLANATIONS) == set(Reason)
    assert all(line and "\n" not in line and "|" not in line for line in EXPLANATIONS.values())
    assert explain("consent_gpc") == EXPLANATIONS[Reason.CONSENT_GPC] and explain("made_up") == ""


def test_docs_reason_codes_is_current() -> None:
    text = (ROOT / "docs" / "reason-codes.md").read_text(encoding="utf-8")
    assert with_table(text) == text, "regenerate: python -m streams.offline.reasondoc --write"
    for reason in Reason:
        assert f"| `{reason.value}` | {EXPLANATIONS[reason]} |" in text


def test_regenerating_replaces_only_the_table() -> None:
    stale = f"# head\n\n{START}\n| `old` | gone |\n{END}\n\ntail\n"
    fresh = with_table(stale)
    assert fresh.startswith("# head\n\n") and fresh.endswith("\n\ntail\n")
    assert "`old`" not in fresh and reason_table() in fresh
