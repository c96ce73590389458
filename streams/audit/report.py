"""Replay reports: a terminal summary, JSON Lines for tools, a self-contained HTML page.

The HTML has no external resources (inline CSS and SVG charts), so it opens offline.
Examples show only non-sensitive attributes; identifiers and content never appear.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from streams.audit.replay import STATUSES, Outcome, ReplayResult, safe_timestamp

PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]
SAFE_EXAMPLE_FIELDS = ("event_type", "event_time")


def print_summary(console: Console, result: ReplayResult, whatif: bool) -> None:
    """Tables: verification per status, blocks per partner and reason, what-if changes."""
    verify = Table(title="verification (re-decided under the recorded ruleset and state)")
    verify.add_column("status")
    verify.add_column("records", justify="right")
    for status in STATUSES:
        verify.add_row(status, f"{result.count(status):,}")
    console.print(verify)
    reasons: Counter[tuple[str, str]] = Counter()
    for outcome in result.outcomes:
        for reason in outcome.blocked.get("reasons", []):
            reasons[(outcome.partner, reason)] += 1
    table = Table(title="withheld, by partner and reason")
    for column in ("partner", "reason", "records"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for (partner, reason), count in sorted(reasons.items()):
        table.add_row(partner, reason, f"{count:,}")
    console.print(table)
    problems = ("mismatch", "ruleset_not_found", "invalid_record")
    for outcome in [o for o in result.outcomes if o.status in problems][:20]:
        console.print(
            f"[red]{outcome.status}[/red] {outcome.partner} {_where(outcome)}: {outcome.why}",
            highlight=False,
            markup=False,
        )
    if whatif:
        changes: Counter[tuple[str, str]] = Counter((o.partner, o.change()) for o in result.outcomes)
        what = Table(title="what-if: the proposed ruleset on the same records")
        for column in ("partner", "change", "records", "fields that would leave"):
            what.add_column(column)
        fields: dict[str, set[str]] = defaultdict(set)
        for outcome in result.outcomes:
            if outcome.whatif is not None and outcome.whatif.record:
                fields[outcome.partner].update(outcome.whatif.record)
        for (partner, change), count in sorted(changes.items()):
            shown = ", ".join(sorted(fields[partner])) if change == "newly_forwarded" else ""
            what.add_row(partner, change, f"{count:,}", shown)
        console.print(what)


def _where(outcome: Outcome) -> str:
    """Where a record came from: its recorded source, or where it was read (invalid records)."""
    source = outcome.blocked.get("source")
    if isinstance(source, dict):
        return f"{source.get('topic')}/{source.get('partition')}@{source.get('offset')}"
    read = outcome.blocked
    if "_line" in read:
        return f"line {read['_line']}"
    return f"blocked topic {read.get('_partition', '?')}@{read.get('_offset', '?')}"


def write_jsonl(result: ReplayResult, path: Path) -> None:
    """One JSON object per re-decided record."""
    with path.open("wb") as handle:
        for outcome in result.outcomes:
            handle.write(orjson.dumps(outcome.to_json()) + b"\n")


def _bar_chart(title: str, rows: list[tuple[str, int]], width: int = 640) -> str:
    if not rows:
        return f"<h3>{html.escape(title)}</h3><p>none</p>"
    top = max(count for _, count in rows) or 1
    bar_h, label_w = 22, 260
    height = bar_h * len(rows) + 10
    bars = []
    for index, (label, count) in enumerate(rows):
        y = index * bar_h + 5
        length = int((width - label_w - 80) * count / top)
        bars.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{max(length, 1)}" height="{bar_h - 6}" '
            f'fill="{PALETTE[index % len(PALETTE)]}"><title>{html.escape(label)}: {count}</title></rect>'
            f'<text x="{label_w + length + 6}" y="{y + 15}">{count:,}</text>'
        )
    return (
        f'<h3>{html.escape(title)}</h3><svg class="chart" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">{"".join(bars)}</svg>'
    )


def _time_chart(outcomes: list[Outcome], width: int = 900, height: int = 260) -> str:
    stamps = [
        safe_timestamp(o.blocked.get("_timestamp_ms"))
        or safe_timestamp((o.blocked.get("source") or {}).get("timestamp_ms"))
        for o in outcomes
    ]
    known = [s for s in stamps if s is not None]
    span = (max(known) - min(known)) if known else 0
    bucket_ms = max(60_000, -(-span // 24) if span else 60_000)  # about 24 bars, at least a minute each
    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for outcome, stamp in zip(outcomes, stamps, strict=True):
        if stamp is None:
            continue
        for reason in outcome.blocked.get("reasons", []):
            buckets[int(stamp // bucket_ms)][f"{outcome.partner}: {reason}"] += 1
    if not buckets:
        return "<h3>Blocks per reason and partner over time</h3><p>no timestamps</p>"
    series = sorted({key for counter in buckets.values() for key in counter})
    colors = {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(series)}
    ordered = sorted(buckets)
    top = max(sum(c.values()) for c in buckets.values()) or 1
    slot = (width - 60) / len(ordered)
    parts = []
    for index, bucket in enumerate(ordered):
        y: float = height - 30
        for key in series:
            count = buckets[bucket][key]
            if not count:
                continue
            h = (height - 50) * count / top
            y -= h
            parts.append(
                f'<rect x="{50 + index * slot:.1f}" y="{y:.1f}" width="{max(slot - 4, 2):.1f}" '
                f'height="{h:.1f}" fill="{colors[key]}"><title>{html.escape(key)}: {count}</title></rect>'
            )
        label = datetime.fromtimestamp(bucket * bucket_ms / 1000, UTC).strftime("%m-%d %H:%M")
        parts.append(f'<text x="{50 + index * slot:.1f}" y="{height - 12}" font-size="10">{label}</text>')
    legend = "".join(
        f'<span class="key"><i style="background:{colors[k]}"></i>{html.escape(k)}</span>' for k in series
    )
    return (
        f"<h3>Blocks per reason and partner over time ({bucket_ms // 60_000} min bars)</h3>"
        f'<svg class="chart" width="{width}" height="{height}" role="img" aria-label="blocks over time">'
        f'{"".join(parts)}</svg><div class="legend">{legend}</div>'
    )


def _examples(result: ReplayResult, limit: int) -> list[Outcome]:
    """Failures first, then one record per (partner, reasons) combination."""
    failures = [o for o in result.outcomes if o.status != "match"]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    varied = []
    for outcome in result.outcomes:
        key = (outcome.partner, tuple(outcome.blocked.get("reasons", [])))
        if outcome.status == "match" and key not in seen:
            seen.add(key)
            varied.append(outcome)
    return (failures + varied)[:limit]


def _example_rows(result: ReplayResult, limit: int = 40) -> str:
    rows = []
    for outcome in _examples(result, limit):
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    outcome.partner,
                    ", ".join(outcome.blocked.get("reasons", [])),
                    outcome.status,
                    _where(outcome),
                    "[redacted]",
                    outcome.change() if outcome.whatif is not None else "",
                )
            )
            + "</tr>"
        )
    header = "".join(
        f"<th>{h}</th>" for h in ("partner", "reasons", "verification", "source", "payload", "what-if")
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_html(result: ReplayResult, path: Path, title: str = "partner-guard replay report") -> None:
    """A self-contained HTML report with charts and redacted examples."""
    reasons = Counter(r for o in result.outcomes for r in o.blocked.get("reasons", []))
    partners = Counter(o.partner for o in result.outcomes)
    status: list[tuple[str, int]] = [(s, result.count(s)) for s in STATUSES]
    changes = Counter(o.change() for o in result.outcomes if o.whatif is not None)
    verdict = (
        "<b class=bad>Some decisions did not reproduce.</b>"
        if result.failed
        else "<b class=ok>Every verifiable decision reproduced.</b>"
    )
    if result.has_invalid:
        invalid = result.count("invalid_record")
        verdict += f" <b class=bad>{invalid:,} record(s) are not valid blocked records.</b>"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(result.outcomes):,} blocked records re-decided. {verdict}</p>",
        _bar_chart("Verification", status),
        _bar_chart("Top block reasons", reasons.most_common(12)),
        _bar_chart("Blocked records per partner", sorted(partners.items())),
        _time_chart(result.outcomes),
    ]
    if changes:
        body.append(_bar_chart("What-if: changes under the proposed ruleset", sorted(changes.items())))
    body.append("<h3>Examples (payloads redacted)</h3>" + _example_rows(result))
    style = (
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222}svg.chart text{font-size:12px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
        ".legend .key{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;"
        "margin-right:4px}.bad{color:#c00}.ok{color:#080}"
    )
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
