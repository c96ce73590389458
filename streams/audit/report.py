"""Replay reports: a terminal summary, JSON Lines for tools (the HTML page: `report_html`).

The terminal and the HTML page render the same computed data (`report_model`): the same
verdict and the same what-if table. Examples show only non-sensitive attributes; payloads
never appear.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from streams.audit.replay import STATUSES, ReplayResult
from streams.audit.report_html import write_html
from streams.audit.report_model import (
    AMBER_STATUSES,
    RED_STATUSES,
    reasons_of,
    source_text,
    verdict_of,
    whatif_of,
)

__all__ = ["print_summary", "write_html", "write_jsonl"]
VERDICT_STYLES = {"green": "bold green", "amber": "bold yellow", "red": "bold red"}
PROBLEMS_LISTED = 20  # the terminal lists this many problem records; --jsonl and --html have them all


def print_summary(console: Console, result: ReplayResult, whatif: bool) -> None:
    """Tables: verification per status, blocks per partner and reason, what-if; then the verdict."""
    verify = Table(title="verification (re-decided under the recorded ruleset and state)")
    verify.add_column("status")
    verify.add_column("records", justify="right")
    for status in STATUSES:
        verify.add_row(status, f"{result.count(status):,}")
    console.print(verify)
    reasons: Counter[tuple[str, str]] = Counter()
    for outcome in result.outcomes:
        for reason in reasons_of(outcome):
            reasons[(outcome.partner, reason)] += 1
    table = Table(title="withheld, by partner and reason")
    for column in ("partner", "reason", "records"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for (partner, reason), count in sorted(reasons.items()):
        table.add_row(partner, reason, f"{count:,}")
    console.print(table)
    problems = (*RED_STATUSES, *AMBER_STATUSES)
    for outcome in [o for o in result.outcomes if o.status in problems][:PROBLEMS_LISTED]:
        console.print(
            f"{outcome.status} {outcome.partner} {source_text(outcome)}: {outcome.why}",
            style="red" if outcome.status in RED_STATUSES else "yellow",
            highlight=False,
            markup=False,
        )
    if whatif:
        _print_whatif(console, result)
    verdict = verdict_of(result)
    console.print(verdict.text, style=VERDICT_STYLES[verdict.level], highlight=False, markup=False)


def _print_whatif(console: Console, result: ReplayResult) -> None:
    summary = whatif_of(result)
    what = Table(title="what-if: the proposed ruleset on the same records")
    for column in ("partner", "event type", "newly_forwarded", "fields that would leave"):
        what.add_column(column, justify="right" if column == "newly_forwarded" else "left")
    what.add_column("reason_change", justify="right")
    what.add_column("unchanged", justify="right")
    for row in summary.changed:
        what.add_row(
            row.partner,
            row.event_type,
            f"{row.newly_forwarded:,}",
            ", ".join(row.fields),
            f"{row.reason_change:,}",
            f"{row.unchanged:,}",
        )
    if summary.changed:
        console.print(what)
    if summary.unchanged_note:
        console.print(summary.unchanged_note, highlight=False, markup=False)
    if summary.not_redecided:
        console.print(f"{summary.not_redecided:,} record(s) not re-decided under the proposed ruleset")


def write_jsonl(result: ReplayResult, path: Path) -> None:
    """One JSON object per re-decided record."""
    with path.open("wb") as handle:
        for outcome in result.outcomes:
            handle.write(orjson.dumps(outcome.to_json()) + b"\n")
