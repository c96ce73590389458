"""The replay report as one self-contained HTML page: inline CSS and server-side SVG, no script.

The page is rendered by Jinja2 with autoescaping on, so every value that came from a
blocked record (event ids, reason strings, field names, rule ids) is escaped wherever it
lands: text, attribute or SVG `<title>`. Nothing on the page loads from the network.
Sections (their ids are what the browser test reads): `run` (what was replayed, rulesets,
version), `verdict`, `whatif`, `timeline` (one small chart per partner, one colour per
reason), `examples` (failures first, grouped by kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from streams.audit.forwarded import FINDINGS_SHOWN, ForwardedAudit
from streams.audit.replay import ReplayResult
from streams.audit.report_model import (
    APART_REASON,
    DIGESTS_SHOWN,
    OTHER,
    STATUS_NOUNS,
    ReplayRun,
    Timeline,
    digests_seen,
    example_groups,
    format_time,
    plural,
    reasons_explained,
    time_range,
    timeline_of,
    verdict_of,
    whatif_of,
)
from streams.core.reasons import explain

# Tableau 10 without its grey, which is kept for OTHER: distinct hues for the charted reasons.
REASON_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
OTHER_COLOUR = "#bab0ac"
# Geometry of one partner's chart, in SVG user units (pixels).
CHART_WIDTH, CHART_HEIGHT = 880, 132
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 56, 8, 8, 22
X_LABELS = 6  # about this many time labels under each chart
LABEL_WIDTH = 84.0  # room one time label needs, so that labels never overlap
MAX_SLOT = 48.0  # a bar is at most this wide, so a short replay's few bars do not fill the chart
MINUTE_MS, DAY_MS = 60_000, 86_400_000
# Example columns that read badly when wrapped (short, fixed-shape values).
NOWRAP_COLUMNS = frozenset({"event id", "withheld at (UTC)", "source", "partner", "rule", "what-if"})


@dataclass(frozen=True)
class Bar:
    """One reason's part of one time bucket's stacked bar."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    tooltip: str


@dataclass(frozen=True)
class Tick:
    """A time label under a chart."""

    x: float
    text: str


@dataclass(frozen=True)
class PartnerChart:
    """One partner's small chart, laid out."""

    partner: str
    records: int
    peak: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    apart: int = 0  # records blocked only for the reason counted apart (not charted)


def reason_colours(timeline: Timeline) -> dict[str, str]:
    """One colour per charted reason, the same in every chart and the legend."""
    named = [name for name, _ in timeline.legend if name != OTHER]
    colours = {name: REASON_COLOURS[i % len(REASON_COLOURS)] for i, name in enumerate(named)}
    return {**colours, OTHER: OTHER_COLOUR}


def lay_out(timeline: Timeline) -> list[PartnerChart]:
    """Stacked bars per bucket for every partner, on the same time axis."""
    colours = reason_colours(timeline)
    plot_w = CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT
    plot_h = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM
    count = max(len(p.buckets) for p in timeline.partners)
    slot = min(plot_w / count, MAX_SLOT)
    if timeline.bucket_ms < MINUTE_MS:
        label_pattern = "%H:%M:%S"
    else:
        label_pattern = "%Y-%m-%d" if timeline.bucket_ms >= DAY_MS else "%m-%d %H:%M"
    step = max(1, math.ceil(count / X_LABELS), math.ceil(LABEL_WIDTH / slot))
    ticks = tuple(
        Tick(
            PLOT_LEFT + i * slot,
            datetime.fromtimestamp((timeline.start_ms + i * timeline.bucket_ms) / 1000, UTC).strftime(
                label_pattern
            ),
        )
        for i in range(0, count, step)
    )
    charts = []
    for series in timeline.partners:
        peak = max((sum(n for _, n in bucket) for bucket in series.buckets), default=0) or 1
        bars = []
        for index, bucket in enumerate(series.buckets):
            base = float(PLOT_TOP + plot_h)
            when = format_time(timeline.start_ms + index * timeline.bucket_ms)
            for reason, n in bucket:
                height = plot_h * n / peak
                base -= height
                bars.append(
                    Bar(
                        round(PLOT_LEFT + index * slot + slot * 0.1, 1),
                        round(base, 1),
                        round(max(slot * 0.8, 1.0), 1),
                        round(height, 1),
                        colours[reason],
                        f"{reason}: {n:,} (from {when})",
                    )
                )
        charts.append(PartnerChart(series.partner, series.records, peak, tuple(bars), ticks, series.apart))
    return charts


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("streams.audit", "report_templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["plural"] = plural
    environment.globals["format_time"] = format_time
    environment.globals["status_nouns"] = STATUS_NOUNS
    environment.globals["nowrap"] = NOWRAP_COLUMNS
    environment.globals["digests_shown"] = DIGESTS_SHOWN
    environment.globals["explain"] = explain
    return environment


def questions(forwarded: ForwardedAudit | None, verified: bool, whatif: bool) -> list[tuple[str, bool, str]]:
    """The questions the page answers and does not: (question, answered, how or why not)."""
    return [
        (
            "What did each partner receive, and was anything shared that should not have been?",
            forwarded is not None,
            "partner topics read: leak re-scan, projection at the recorded digest, conservation"
            if forwarded is not None
            else "not answered: the partner topics were not read (run `replay forwarded`)",
        ),
        (
            "Did every block reproduce under the ruleset that decided it?",
            verified,
            "blocked records re-decided with their recorded state"
            if verified
            else "not answered: the blocked records were not re-decided (run `replay`)",
        ),
        (
            "What would a proposed ruleset change?",
            whatif,
            "re-decided under the proposed ruleset"
            if whatif
            else "not answered: no --rules or --rules-ref given",
        ),
    ]


def render_html(
    result: ReplayResult,
    run: ReplayRun,
    whatif: bool,
    forwarded: ForwardedAudit | None = None,
    verified: bool = True,
    optouts: Any = None,
) -> str:
    """The report page for a replay (and, when given, what the partners received);
    `optouts` (`audit.optouts.NoticeSection`) adds the notices section."""
    timeline = timeline_of(result)
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title="partner-guard replay report",
            run=run,
            total=len(result.outcomes),
            time_range=time_range(result),
            digests=digests_seen(result),
            verdict=verdict_of(result),
            whatif=whatif_of(result) if whatif else None,
            timeline=timeline,
            colours=reason_colours(timeline) if timeline else {},
            charts=lay_out(timeline) if timeline else [],
            geometry={"width": CHART_WIDTH, "height": CHART_HEIGHT, "left": PLOT_LEFT, "top": PLOT_TOP},
            groups=example_groups(result, whatif),
            forwarded=forwarded,
            verified=verified,
            questions=questions(forwarded, verified, whatif),
            reasons=reasons_explained(result),
            apart_reason=APART_REASON,
            findings_shown=FINDINGS_SHOWN,
            optouts=optouts,
        )
    )


def write_html(
    result: ReplayResult,
    path: Path,
    run: ReplayRun,
    whatif: bool,
    forwarded: ForwardedAudit | None = None,
    optouts: Any = None,
) -> None:
    """Write the self-contained report page."""
    path.write_text(render_html(result, run, whatif, forwarded, optouts=optouts), encoding="utf-8")
