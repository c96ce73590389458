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

from streams.audit.forwarded import ForwardedAudit
from streams.audit.replay import STATUSES, ReplayResult
from streams.audit.report_html import render_html, write_html
from streams.audit.report_model import (
    AMBER_STATUSES,
    RED_STATUSES,
    ReplayRun,
    reasons_of,
    source_text,
    verdict_of,
    whatif_of,
)
from streams.core.reasons import explain

__all__ = ["print_forwarded", "print_summary", "write_forwarded_html", "write_html", "write_jsonl"]
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
    for column in ("partner", "reason", "records", "means: withheld because"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for (partner, reason), count in sorted(reasons.items()):
        table.add_row(partner, reason, f"{count:,}", explain(reason))
    console.print(table)
    problems = (*RED_STATUSES, *AMBER_STATUSES)
    listed = [o for o in result.outcomes if o.status in problems]
    for outcome in listed[:PROBLEMS_LISTED]:
        console.print(
            f"{outcome.status} {outcome.partner} {source_text(outcome)}: {outcome.why}",
            style="red" if outcome.status in RED_STATUSES else "yellow",
            highlight=False,
            markup=False,
        )
    if len(listed) > PROBLEMS_LISTED:
        console.print(f"{len(listed) - PROBLEMS_LISTED:,} more; all in --jsonl", highlight=False)
    if whatif:
        _print_whatif(console, result)
    verdict = verdict_of(result)
    console.print(
        verdict.text, style=VERDICT_STYLES[verdict.level], highlight=False, markup=False, soft_wrap=True
    )


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
    if summary.new is not None:
        added = Table(title=f"what-if: new partners {', '.join(summary.new.partners)}, every input decided")
        for column in (
            "new partner",
            "event type",
            "would forward",
            "fields that would leave",
            "would block",
        ):
            added.add_column(column, justify="right" if column.startswith("would") else "left")
        for new_row in summary.new.rows:
            added.add_row(
                new_row.partner,
                new_row.event_type,
                f"{new_row.would_forward:,}",
                ", ".join(new_row.fields),
                f"{new_row.would_block:,}",
            )
        console.print(added)
        for note in summary.new.notes():
            console.print(f"new partners: {note}", highlight=False, markup=False, soft_wrap=True)
    if summary.not_redecided:
        console.print(f"{summary.not_redecided:,} record(s) not re-decided under the proposed ruleset")


def write_jsonl(result: ReplayResult, path: Path) -> None:
    """One JSON object per re-decided record."""
    with path.open("wb") as handle:
        for outcome in result.outcomes:
            handle.write(orjson.dumps(outcome.to_json()) + b"\n")


def _fields_text(fields: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{name} ({transform})" for name, transform in sorted(fields))


def print_forwarded(console: Console, audit: ForwardedAudit) -> None:
    """Per partner: what it received (events, fields and transforms), the findings; then the verdict."""
    for summary in audit.partners:
        missing = " (the topic does not exist: nothing was sent)" if summary.topic_missing else ""
        heading = f"{summary.partner}: {summary.records:,} record(s) on {summary.topic}{missing}"
        console.print(heading, style="bold", highlight=False, markup=False, soft_wrap=True)
        table = Table()
        for column in ("event type", "records", "fields (transform)"):
            table.add_column(column, justify="right" if column == "records" else "left")
        for event_type, count in sorted(summary.by_event_type.items()):
            table.add_row(event_type, f"{count:,}", _fields_text(Counter(summary.fields[event_type])))
        if summary.records:
            console.print(table)
        for kind, records in (
            ("leak", summary.leaks),
            ("projection", summary.projection),
            ("unverified", summary.unverified),
        ):
            for record in records[:PROBLEMS_LISTED]:
                why = "; ".join(record.leaks) if kind == "leak" else record.projection or record.unverified
                style = "yellow" if kind == "unverified" else "red"
                console.print(f"{kind} {record.where}: {why}", style=style, highlight=False, markup=False)
            if len(records) > PROBLEMS_LISTED:
                console.print(f"  {len(records) - PROBLEMS_LISTED:,} more {kind}; all in --jsonl")
    c = audit.conservation
    if c.ran:
        console.print(
            f"conservation: {c.inputs:,} input(s) in range, {c.checked_pairs:,} (input, partner) pairs; "
            f"missing {len(c.missing):,}, duplicated {len(c.duplicated):,}, outputs naming no input "
            f"{len(c.orphans):,}, no output yet {c.undecided:,}, input past retention {c.not_held:,}, "
            f"outputs without source headers {c.unplaced:,}",
            highlight=False,
            markup=False,
        )
        for position, partner in c.missing[:PROBLEMS_LISTED]:
            console.print(f"missing {partner} {position[0]}/{position[1]}@{position[2]}", style="red")
        for position, partner, seen in c.duplicated[:PROBLEMS_LISTED]:
            console.print(
                f"duplicated {partner} {position[0]}/{position[1]}@{position[2]} x{seen}", style="red"
            )
        for partner, position in c.orphans[:PROBLEMS_LISTED]:
            console.print(f"no such input {partner} {position[0]}/{position[1]}@{position[2]}", style="red")
    else:
        console.print(f"conservation not checked: {c.why_not}", style="yellow", highlight=False, markup=False)
    console.print(
        audit.verdict(), style=VERDICT_STYLES[audit.level], highlight=False, markup=False, soft_wrap=True
    )


def write_forwarded_jsonl(audit: ForwardedAudit, path: Path) -> None:
    """One JSON object per partner record read (field names, never values)."""
    with path.open("wb") as handle:
        for record in audit.records:
            handle.write(orjson.dumps(record.to_json()) + b"\n")


def write_forwarded_html(audit: ForwardedAudit, path: Path, run: ReplayRun) -> None:
    """The report page with only the "What partners received" section answered."""
    path.write_text(
        render_html(ReplayResult([]), run, False, forwarded=audit, verified=False), encoding="utf-8"
    )
