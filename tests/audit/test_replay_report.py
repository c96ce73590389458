"""The replay report, section by section, over generated replay results (no broker, no browser)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from streams.audit.replay import MAX_TIMESTAMP_MS, Outcome, ReplayResult, Status
from streams.audit.report import print_summary
from streams.audit.report_html import LABEL_WIDTH, MAX_SLOT, REASON_COLOURS, lay_out, render_html, write_html
from streams.audit.report_model import (
    DIGESTS_SHOWN,
    OTHER,
    TOP_REASONS,
    ReplayRun,
    example_groups,
    timeline_of,
    verdict_of,
    whatif_of,
)
from streams.core.models import Decision
from tests.conftest import ROOT
from tests.report_dom import loading_attributes, sections

DIGEST = "sha256:" + "a" * 64
LOST_DIGEST = "sha256:" + "0" * 64
START_MS = 1_795_000_000_000  # 2026-11-18 11:06:40 UTC
RUN = ReplayRun(
    source="topic guard.blocked on 127.0.0.1:9092",
    filters=(("--partner", "install-attribution"), ("--since", "2026-11-18")),
    rulesets_searched="rules/; rules/ in the last 200 commits of /repo",
    whatif="--rules proposed/ (digest sha256:bbbb)",
    generated_at=datetime(2026, 11, 29, 14, 5, 9, tzinfo=UTC),
    version="0.1.0",
    commit="13b3e05dadf1",
)
XSS = "<script>alert('id')</script>"


def _blocked(
    index: int,
    partner: str = "install-attribution",
    reasons: Sequence[str] = ("consent_missing",),
    event_id: str | None = None,
    digest: str = DIGEST,
) -> dict[str, Any]:
    return {
        "partner": partner,
        "rule_id": f"{partner}-v1",
        "ruleset_digest": digest,
        "reasons": list(reasons),
        "event_id": event_id if event_id is not None else f"ev-{index}",
        "_timestamp_ms": START_MS + index * 60_000,
        "source": {"topic": "internal.events", "partition": 0, "offset": index},
    }


def _outcome(index: int, status: Status = "match", **blocked: Any) -> Outcome:
    why = "" if status == "match" else f"{status} because of record {index}"
    return Outcome(_blocked(index, **blocked), status, why)


def _whatif(outcome: Outcome, event_type: str, record: dict[str, Any] | None) -> Outcome:
    outcome.event_type = event_type
    outcome.whatif = Decision(
        partner=outcome.partner,
        rule_id="proposed",
        ruleset_digest="sha256:bbbb",
        event_id=None,
        verdict="forward" if record is not None else "block",
        reasons=() if record is not None else ("consent_missing",),
        record=record,
    )
    return outcome


def _section_html(page: str, section: str) -> str:
    match = re.search(rf'<(section|header) id="{section}">(.*?)</\1>', page, re.S)
    assert match, section
    return match.group(2)


def _mixed() -> ReplayResult:
    """Verified records, two mismatches, a lost ruleset, an unverifiable and an invalid record."""
    outcomes = [_outcome(i) for i in range(10)]
    outcomes += [_outcome(20, "mismatch"), _outcome(21, "mismatch", event_id=XSS)]
    outcomes.append(_outcome(22, "ruleset_not_found", digest=LOST_DIGEST))
    outcomes.append(_outcome(23, "unverifiable"))
    outcomes.append(Outcome({"_line": 30}, "invalid_record", "not a JSON object (list)"))
    return ReplayResult(outcomes)


def test_header_says_what_was_replayed_with_which_rulesets_when_and_by_which_version() -> None:
    header = sections(render_html(_mixed(), RUN, whatif=True))["run"]
    assert "Replayed topic guard.blocked on 127.0.0.1:9092" in header
    assert "--partner install-attribution, --since 2026-11-18" in header
    assert "15 selected, withheld from 2026-11-18 11:06:40 to 2026-11-18 11:29:40 UTC" in header
    assert f"{DIGEST}: 13 records" in header and f"{LOST_DIGEST}: 1 record (1 not found)" in header
    assert "rules/ in the last 200 commits of /repo" in header
    assert "--rules proposed/ (digest sha256:bbbb)" in header
    assert "2026-11-29 14:05:09 UTC by partner-guard 0.1.0 (commit 13b3e05dadf1)" in header
    bare = ReplayRun(source="file blocked.jsonl", generated_at=RUN.generated_at)
    header = sections(render_html(ReplayResult([_outcome(1)]), bare, whatif=False))["run"]
    assert "none: every blocked record read" in header and "none (no --rules or --rules-ref given)" in header
    assert "git commit not available" in header
    many = [_outcome(i, digest=f"sha256:{i:064x}") for i in range(DIGESTS_SHOWN + 3)]
    header = sections(render_html(ReplayResult(many), RUN, whatif=False))["run"]
    assert "and 3 more digests (3 records, 0 not found)" in header  # hostile input cannot flood the header


def test_the_run_description_carries_the_installed_version_and_the_clock_it_is_given() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = ReplayRun.describe("file x.jsonl", {"--reason": "minor", "--rule": None}, "rules/", None, moment)
    assert run.filters == (("--reason", "minor"),) and run.generated_at == moment
    assert run.version == metadata.version("partner-guard")
    if (ROOT / ".git").exists():  # a checkout, not an unpacked archive: the commit is named
        assert run.commit and re.search(r"[0-9a-f]{12}(-dirty)?$", run.commit)


@pytest.mark.parametrize(
    ("outcomes", "level", "text"),
    [
        (
            [_outcome(1), _outcome(2)],
            "green",
            "All 2 selected records verified: every decision reproduced under its recorded ruleset.",
        ),
        (
            [_outcome(1), _outcome(2, "ruleset_not_found"), _outcome(3, "unverifiable")],
            "amber",
            "No mismatch, but not verified: 1 record whose ruleset was not found (1 distinct digest), "
            "1 unverifiable record. "
            "1 of 3 selected records verified.",
        ),
        (
            [_outcome(1), _outcome(2, "mismatch"), _outcome(3, "mismatch"), _outcome(4, "invalid_record")],
            "red",
            "2 mismatches: re-decided differently from the record. Also not verified: 1 invalid record. "
            "1 of 4 selected records verified.",
        ),
        (
            [_outcome(1, "source_expired")],
            "amber",
            "No mismatch, but not verified: 1 original past retention.",
        ),
        ([_outcome(1)], "green", "The 1 selected record verified: its decision reproduced."),
        ([], "amber", "No record selected: nothing was verified."),
    ],
)
def test_verdict_is_exact_and_green_only_when_every_record_verified(
    outcomes: list[Outcome], level: str, text: str
) -> None:
    result = ReplayResult(outcomes)
    verdict = verdict_of(result)
    assert verdict.level == level and verdict.text.startswith(text)
    page = render_html(result, RUN, whatif=False)
    assert f'<p id="verdict-line" class="verdict {level}">' in page
    line = sections(page)["verdict-line"]
    assert line.startswith(text)
    if level != "red":
        assert not re.search(r"\d mismatch", line) and "did not reproduce" not in line


def test_terminal_ends_with_the_same_verdict() -> None:
    console = Console(record=True, width=200)
    result = _mixed()
    print_summary(console, result, whatif=False)
    assert console.export_text().rstrip().endswith(verdict_of(result).text)


def _whatif_result() -> ReplayResult:
    record = {"event_id": "p-1", "event_type": "app_install", "country": "US", "<b>bold</b>": 1}
    nested = {"event_id": "p-2", "device": {"platform": "ios"}}
    return ReplayResult(
        [
            _whatif(_outcome(1), "app_install", record),
            _whatif(_outcome(2), "app_install", record),
            _whatif(_outcome(3), "app_install", None),
            _whatif(_outcome(4, partner="signup-conversions"), "site_visit", nested),
            _whatif(_outcome(5, partner="signup-conversions"), "site_visit", None),
            _whatif(_outcome(7, partner="signup-conversions"), "title_selected", None),
            _whatif(_outcome(8, partner="signup-conversions"), "title_selected", None),
            _outcome(6, "unverifiable"),  # no original: not re-decided
        ]
    )


def test_whatif_table_per_partner_and_event_type_names_the_fields_that_would_leave() -> None:
    result = _whatif_result()
    summary = whatif_of(result)
    assert [(r.partner, r.event_type, r.newly_forwarded, r.unchanged) for r in summary.rows] == [
        ("install-attribution", "app_install", 2, 1),
        ("signup-conversions", "site_visit", 1, 1),
        ("signup-conversions", "title_selected", 0, 2),
    ]
    assert summary.rows[0].fields == ("<b>bold</b>", "country", "event_id", "event_type")
    assert summary.rows[1].fields == ("device.platform", "event_id")
    assert summary.not_redecided == 1
    page = render_html(result, RUN, whatif=True)
    section = sections(page)["whatif"]
    assert "install-attribution app_install 2 <b>bold</b>, country, event_id, event_type 0 1" in section
    assert "signup-conversions site_visit 1 device.platform, event_id 0 1" in section
    assert "title_selected" not in section  # nothing changes there: summed up, not listed
    note = "Nothing changes for 1 other partner and event type: 2 records stay blocked for the same reasons."
    assert note in section
    assert "1 record was not re-decided under the proposed ruleset" in section
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page  # a field name is data
    # one computation, two renderings: the terminal shows the same rows
    console = Console(record=True, width=240)
    print_summary(console, result, whatif=True)
    terminal = console.export_text()
    assert note in " ".join(terminal.split())
    for row in summary.changed:
        assert re.search(rf"{row.partner}\s*│\s*{row.event_type}\s*│\s*{row.newly_forwarded}\s*│", terminal)
        assert ", ".join(row.fields) in terminal
    without = sections(render_html(result, RUN, whatif=False))["whatif"]
    assert "No proposed ruleset was given" in without


def test_time_chart_shows_top_reasons_plus_other_one_colour_each_one_chart_per_partner() -> None:
    reasons = [f"reason_{n:02d}" for n in range(TOP_REASONS + 5)]
    weighted = [r for n, r in enumerate(reasons) for _ in range(3 * (len(reasons) - n))]  # reason_00 most
    outcomes = []
    for index, reason in enumerate(weighted):
        partner = ("install-attribution", "signup-conversions", "<i>p3</i>")[index % 3]
        outcomes.append(_outcome(index * 7, partner=partner, reasons=[reason]))
    page = render_html(ReplayResult(outcomes), RUN, whatif=False)
    section = _section_html(page, "timeline")
    legend = re.findall(r'<i style="background:(#[0-9a-f]{6})"></i>([^<]+) \(', section)
    names = [name for _, name in legend]
    assert names[-1] == OTHER and len(names) == TOP_REASONS + 1
    assert names[:TOP_REASONS] == reasons[:TOP_REASONS]
    colours = dict((name, colour) for colour, name in legend)
    assert len(set(colours.values())) == len(colours)  # one colour per reason
    assert set(colours.values()) <= {*REASON_COLOURS, "#bab0ac"}
    charts = re.findall(r'<svg class="chart".*?</svg>', section, re.S)
    assert len(charts) == 3  # one small chart per partner
    assert 'aria-label="blocks over time for &lt;i&gt;p3&lt;/i&gt;"' in section
    for chart in charts:  # every bar's colour is its reason's colour in the legend
        for colour, reason in re.findall(r'fill="(#[0-9a-f]{6})"><title>([^:]+):', chart):
            assert colours[reason] == colour


def test_examples_put_failures_first_grouped_by_kind_and_state_constant_columns_once() -> None:
    result = _mixed()
    groups = example_groups(result, whatif=False)
    assert [g.status for g in groups] == [
        "mismatch",
        "ruleset_not_found",
        "invalid_record",
        "unverifiable",
        "match",
    ]
    mismatches = groups[0]
    assert mismatches.level == "red" and mismatches.total == 2
    assert ("partner", "install-attribution") in mismatches.constant
    assert "partner" not in mismatches.columns and "what-if" not in mismatches.columns
    assert mismatches.columns[:2] == ("event id", "withheld at (UTC)")
    assert [row[:2] for row in mismatches.rows] == [
        ("ev-20", "2026-11-18 11:26:40"),
        (XSS, "2026-11-18 11:27:40"),
    ]
    single = groups[2]  # one row: nothing is folded away, nothing constant
    assert single.constant == () and "source" in single.columns and single.rows[0][0] == "—"
    page = render_html(result, RUN, whatif=False)
    text = sections(page)
    assert text["examples"].index("2 mismatches") < text["examples"].index("Verified")
    assert "In every row: partner install-attribution" in text["examples-mismatch"]
    assert "1 record whose ruleset was not found" in text["examples-ruleset_not_found"]


def test_hostile_values_are_escaped_and_the_page_is_self_contained(tmp_path: Path) -> None:
    hostile = [
        _outcome(1, "mismatch", event_id=XSS, reasons=['"><img src=x onerror=alert(1)>']),
        _outcome(2, partner="</title><script>alert(2)</script>"),
        _whatif(_outcome(3), '<svg onload="alert(3)">', {'<a href="http://evil">': 1}),
    ]
    page_path = tmp_path / "report.html"
    write_html(ReplayResult(hostile), page_path, RUN, whatif=True)
    page = page_path.read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page and "<a " not in page
    assert "&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;" in page
    assert "http://" not in page.replace("http://evil", "") and "https://" not in page
    assert "onerror=alert(1)&gt;" in page
    assert not loading_attributes(page)  # nothing is loaded from anywhere
    assert XSS in sections(page)["examples-mismatch"]  # shown as text, verbatim


def test_time_chart_bars_fit_both_a_short_run_and_hostile_far_apart_timestamps() -> None:
    short = timeline_of(ReplayResult([_outcome(0), _outcome(0)]))
    assert short is not None and short.bucket_text == "1 s" and len(short.partners[0].buckets) == 1
    bars = lay_out(short)[0].bars
    assert bars and all(bar.width <= MAX_SLOT for bar in bars)  # one bar does not fill the chart
    far = [_outcome(0), _outcome(1)]
    far[0].blocked["_timestamp_ms"], far[1].blocked["_timestamp_ms"] = 0, MAX_TIMESTAMP_MS
    wide = timeline_of(ReplayResult(far))
    assert wide is not None and len(wide.partners[0].buckets) <= 100 and wide.bucket_text.endswith("days")


def test_time_labels_never_overlap() -> None:
    for spacing_ms in (1000, 60_000, 3_600_000):
        outcomes = [_outcome(0) for _ in range(30)]
        for index, outcome in enumerate(outcomes):
            outcome.blocked["_timestamp_ms"] = START_MS + index * spacing_ms
        timeline = timeline_of(ReplayResult(outcomes))
        assert timeline is not None
        ticks = lay_out(timeline)[0].ticks
        assert len(ticks) >= 2 and all(b.x - a.x >= LABEL_WIDTH for a, b in itertools.pairwise(ticks))


def test_the_dull_reason_is_counted_apart_and_every_reason_is_explained() -> None:
    outcomes = [_outcome(i, reasons=["event_type_not_allowed"]) for i in range(30)]
    outcomes += [
        _outcome(40, reasons=["consent_gpc"]),
        _outcome(41, reasons=["event_type_not_allowed", "minor"]),
    ]
    result = ReplayResult(outcomes)
    timeline = timeline_of(result)
    assert timeline is not None and timeline.apart == 30 and timeline.partners[0].apart == 30
    assert [name for name, _ in timeline.legend] == ["consent_gpc", "minor"]  # never charted
    page = render_html(result, RUN, whatif=False)
    shown = sections(page)
    assert "Not charted: 30 records blocked only for event_type_not_allowed" in shown["apart"]
    assert "2 blocked records charted, and 30 only for event_type_not_allowed" in shown["timeline"]
    assert "consent_gpc 1 the browser sent Global Privacy Control" in shown["reasons"]
    console = Console(record=True, width=300)
    print_summary(console, result, whatif=False)
    assert "the browser sent Global Privacy Control" in console.export_text()


def test_left_out_rows_are_counted() -> None:
    outcomes = [_outcome(i, "mismatch") for i in range(140)]
    result = ReplayResult(outcomes)
    shown = sections(render_html(result, RUN, whatif=False))
    assert "115 more; all in --jsonl" in shown["examples-mismatch"]
    console = Console(record=True, width=300)
    print_summary(console, result, whatif=False)
    assert "120 more; all in --jsonl" in console.export_text()
