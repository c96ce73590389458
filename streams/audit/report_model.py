"""What a replay report says, computed once from a replay and rendered twice (terminal, HTML).

Everything here is plain data: the run's description (what was replayed, by which version),
the verdict, the what-if table, the time series of block reasons and the example groups.
The renderers (`report.py` for the terminal, `report_html.py` for the page) only lay it out.
Values read from blocked records are hostile input: they are kept as text here and escaped
by the renderer.
"""

from __future__ import annotations

import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from streams.audit.newpartners import NewPartners
from streams.audit.replay import STATUSES, Outcome, ReplayResult, Status, safe_timestamp
from streams.core.reasons import explain

Level = Literal["green", "amber", "red"]
# Which statuses say "something is wrong" (red) and which say "not verified" (amber).
RED_STATUSES: tuple[Status, ...] = ("mismatch",)
AMBER_STATUSES: tuple[Status, ...] = ("ruleset_not_found", "invalid_record", "unverifiable", "source_expired")
# (singular, plural) of each status in sentences and headings.
STATUS_NOUNS: dict[Status, tuple[str, str]] = {
    "match": ("verified record", "verified records"),
    "mismatch": ("mismatch", "mismatches"),
    "ruleset_not_found": ("record whose ruleset was not found", "records whose ruleset was not found"),
    "invalid_record": ("invalid record", "invalid records"),
    "unverifiable": ("unverifiable record", "unverifiable records"),
    "source_expired": ("original past retention", "originals past retention"),
}
# Top reasons charted by name; the rest are summed as OTHER (more colours stop being readable).
TOP_REASONS = 7
# The expected, dull reason (most traffic is not for partners): counted apart, never charted,
# so that it does not drown the reasons an auditor looks for.
APART_REASON = "event_type_not_allowed"
OTHER = "other"
# Bar widths a time chart may use: the smallest that gives at most MAX_BARS bars wins.
# A hostile timestamp can be anywhere from 1970 to 9999: the widest bars keep that chart small too.
BUCKET_SIZES_MS = tuple(seconds * 1000 for seconds in (1, 5, 15, 30)) + tuple(
    minutes * 60_000
    for minutes in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 10_080, 43_200, 525_600, 5_256_000, 52_560_000)
)
MAX_BARS = 36
# Example rows per group: enough to see a pattern, few enough to read (--jsonl has them all).
EXAMPLES_PER_GROUP = 25
# Columns of the example tables; these two identify a record and are never folded away.
EXAMPLE_COLUMNS = (
    "event id",
    "withheld at (UTC)",
    "partner",
    "rule",
    "reasons",
    "source",
    "detail",
    "what-if",
)
IDENTIFYING_COLUMNS = frozenset({"event id", "withheld at (UTC)"})
# A hostile event id can be megabytes long: shown up to this many characters.
MAX_SHOWN_CHARS = 120
# The header lists this many ruleset digests (most records first) and sums up the rest.
DIGESTS_SHOWN = 10
NOT_KNOWN = "—"  # an em dash: no value


def plural(count: int, nouns: tuple[str, str]) -> str:
    """`1 mismatch`, `3 mismatches` (thousands separated)."""
    return f"{count:,} {nouns[0] if count == 1 else nouns[1]}"


def withheld_at(outcome: Outcome) -> int | None:
    """When the record was withheld (epoch ms), from where it was read or its recorded source."""
    source = outcome.blocked.get("source")
    recorded = source.get("timestamp_ms") if isinstance(source, dict) else None
    read = safe_timestamp(outcome.blocked.get("_timestamp_ms"))
    return read if read is not None else safe_timestamp(recorded)


def format_time(stamp_ms: int | None) -> str:
    """An epoch-ms timestamp as UTC text."""
    if stamp_ms is None:
        return NOT_KNOWN
    return datetime.fromtimestamp(stamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """Text cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reasons_of(outcome: Outcome) -> list[str]:
    """The recorded reason codes (only strings; a hostile record may hold anything)."""
    reasons = outcome.blocked.get("reasons")
    return [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else []


# ---- the run: what was replayed, when and by which version ------------------------------------


def tool_version() -> tuple[str, str | None]:
    """The installed package version, and the git commit of its source checkout when there is one."""
    try:
        version = metadata.version("partner-guard")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        return version, None  # installed from a wheel: no checkout to ask
    try:
        described = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return version, None
    commit = described.stdout.strip()
    return version, commit if described.returncode == 0 and commit else None


@dataclass(frozen=True)
class ReplayRun:
    """What was replayed and how: the report's header, as the command line gave it."""

    source: str
    generated_at: datetime  # passed in (the command reads the clock), shown in UTC
    filters: tuple[tuple[str, str], ...] = ()
    rulesets_searched: str = ""
    whatif: str | None = None
    version: str = "unknown"
    commit: str | None = None

    @property
    def generated_text(self) -> str:
        """When the report was generated, as UTC text."""
        return self.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    @classmethod
    def describe(
        cls,
        source: str,
        filters: Mapping[str, str | None],
        rulesets_searched: str,
        whatif: str | None,
        now: datetime,
    ) -> ReplayRun:
        """The run as the command saw it, stamped with the installed version and commit."""
        version, commit = tool_version()
        given = tuple((name, value) for name, value in filters.items() if value)
        return cls(source, now, given, rulesets_searched, whatif, version, commit)


@dataclass(frozen=True)
class DigestSeen:
    """A ruleset digest recorded by the selected records, and how many could not find it."""

    digest: str
    records: int
    not_found: int


def digests_seen(result: ReplayResult) -> list[DigestSeen]:
    """Every recorded ruleset digest, most records first."""
    records: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    for outcome in result.outcomes:
        digest = outcome.blocked.get("ruleset_digest")
        if isinstance(digest, str):
            records[digest] += 1
            missing[digest] += outcome.status == "ruleset_not_found"
    return [DigestSeen(shorten(d), n, missing[d]) for d, n in records.most_common()]


def time_range(result: ReplayResult) -> tuple[int, int] | None:
    """Earliest and latest withheld time (epoch ms) of the selected records."""
    stamps = [s for s in map(withheld_at, result.outcomes) if s is not None]
    return (min(stamps), max(stamps)) if stamps else None


# ---- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The one-line answer: green only when every selected record verified."""

    level: Level
    text: str
    counts: tuple[tuple[Status, int], ...]


def _not_verified_text(result: ReplayResult, status: Status, count: int) -> str:
    """`3 unverifiable records`; for lost rulesets also how many distinct digests they name."""
    text = plural(count, STATUS_NOUNS[status])
    if status == "ruleset_not_found":
        lost = {str(o.blocked.get("ruleset_digest")) for o in result.outcomes if o.status == status}
        text += f" ({plural(len(lost), ('distinct digest', 'distinct digests'))})"
    return text


def verdict_of(result: ReplayResult) -> Verdict:
    """Red for mismatches; amber for records that could not be verified; green when all verified."""
    counts = {status: result.count(status) for status in STATUSES}
    total = len(result.outcomes)
    listed = tuple((s, n) for s, n in counts.items() if n)
    if total == 0:
        return Verdict("amber", "No record selected: nothing was verified.", listed)
    verified = f"{counts['match']:,} of {total:,} selected records verified."
    not_verified = ", ".join(_not_verified_text(result, s, counts[s]) for s in AMBER_STATUSES if counts[s])
    mismatches = counts["mismatch"]
    if mismatches:
        text = f"{plural(mismatches, STATUS_NOUNS['mismatch'])}: re-decided differently from the record. "
        if not_verified:
            text += f"Also not verified: {not_verified}. "
        return Verdict("red", text + verified, listed)
    if not_verified:
        return Verdict("amber", f"No mismatch, but not verified: {not_verified}. {verified}", listed)
    if total == 1:
        return Verdict("green", "The 1 selected record verified: its decision reproduced.", listed)
    text = f"All {total:,} selected records verified: every decision reproduced under its recorded ruleset."
    return Verdict("green", text, listed)


# ---- what-if ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIfRow:
    """Under the proposed ruleset: one partner and event type."""

    partner: str
    event_type: str
    newly_forwarded: int
    reason_change: int
    unchanged: int
    fields: tuple[str, ...]  # every field that would leave in a newly forwarded record


@dataclass(frozen=True)
class WhatIf:
    """The what-if table, and how many records it could not re-decide."""

    rows: tuple[WhatIfRow, ...]
    not_redecided: int
    new: NewPartners | None = None  # partners the proposed ruleset adds, decided on every input

    @property
    def new_forwards(self) -> int:
        """Inputs the added partners would receive."""
        return sum(row.would_forward for row in self.new.rows) if self.new else 0

    @property
    def changed(self) -> tuple[WhatIfRow, ...]:
        """The rows where some decision changes (the rest are summed up, not listed)."""
        return tuple(row for row in self.rows if row.newly_forwarded or row.reason_change)

    @property
    def unchanged_note(self) -> str:
        """What the listed rows leave out: the (partner, event type) pairs where nothing changes."""
        quiet = [row for row in self.rows if not (row.newly_forwarded or row.reason_change)]
        if not quiet:
            return ""
        count = sum(row.unchanged for row in quiet)
        stay = f"{plural(count, ('record stays', 'records stay'))} blocked for the same reasons"
        if len(quiet) == len(self.rows):
            if self.new is not None:
                added = ", ".join(self.new.partners)
                head = "For the partners the records were withheld from, no decision changes"
                return f"{head}: {stay}; the new partners ({added}) are below."
            return f"The proposed ruleset changes no decision: {stay}."
        pairs = plural(len(quiet), ("other partner and event type", "other partner and event type pairs"))
        return f"Nothing changes for {pairs}: {stay}."


def field_paths(record: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    """The leaf field names of a partner record (nested objects as dotted paths)."""
    for name, value in record.items():
        if isinstance(value, Mapping) and value:
            yield from field_paths(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def whatif_of(result: ReplayResult) -> WhatIf:
    """Per partner and event type: what the proposed ruleset newly forwards, and which fields."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    fields: dict[tuple[str, str], set[str]] = defaultdict(set)
    not_redecided = 0
    for outcome in result.outcomes:
        if outcome.whatif is None:
            not_redecided += 1
            continue
        key = (outcome.partner, outcome.event_type or NOT_KNOWN)
        change = outcome.change()
        counts[key][change] += 1
        if change == "newly_forwarded" and outcome.whatif.record:
            fields[key].update(field_paths(outcome.whatif.record))
    rows = tuple(
        WhatIfRow(
            partner,
            event_type,
            counts[(partner, event_type)]["newly_forwarded"],
            counts[(partner, event_type)]["reason_change"],
            counts[(partner, event_type)]["unchanged"],
            tuple(sorted(fields[(partner, event_type)])),
        )
        for partner, event_type in sorted(counts)
    )
    return WhatIf(rows, not_redecided, result.new_partners)


# ---- blocks over time -------------------------------------------------------------------------


@dataclass(frozen=True)
class PartnerSeries:
    """One partner's blocks per time bucket, counted per charted reason."""

    partner: str
    records: int
    buckets: tuple[tuple[tuple[str, int], ...], ...]  # per bucket: (reason, count) in legend order
    apart: int = 0  # records whose only reason is APART_REASON (not charted)


@dataclass(frozen=True)
class Timeline:
    """Blocks over time: the same buckets and reason colours for every partner."""

    start_ms: int
    bucket_ms: int
    legend: tuple[tuple[str, int], ...]  # charted reasons (top ones, then OTHER) with their totals
    partners: tuple[PartnerSeries, ...]
    untimed: int  # records left out: no usable timestamp
    apart: int = 0  # records whose only reason is APART_REASON, counted apart

    @property
    def bucket_text(self) -> str:
        """The bar width in words: `5 s`, `15 min`, `3 h`, `7 days`."""
        minutes = self.bucket_ms // 60_000
        if minutes == 0:
            return f"{self.bucket_ms // 1000} s"
        if minutes < 60:
            return f"{minutes} min"
        if minutes < 1440:
            return f"{minutes // 60} h"
        return plural(minutes // 1440, ("day", "days"))


def bucket_size(span_ms: int) -> int:
    """The narrowest bar width that keeps the chart at most MAX_BARS bars wide."""
    return next((size for size in BUCKET_SIZES_MS if span_ms // size < MAX_BARS), BUCKET_SIZES_MS[-1])


def timeline_of(result: ReplayResult) -> Timeline | None:
    """Blocks per reason over time, one series per partner; None when no record has a time.

    `event_type_not_allowed` (APART_REASON) is counted apart per partner, never charted.
    """
    with_reasons = [(o.partner, withheld_at(o), r) for o in result.outcomes if (r := reasons_of(o))]
    timed = [(partner, stamp, reasons) for partner, stamp, reasons in with_reasons if stamp is not None]
    if not timed:
        return None
    apart: Counter[str] = Counter(partner for partner, _, reasons in timed if reasons == [APART_REASON])
    charted = [(p, s, [r for r in reasons if r != APART_REASON]) for p, s, reasons in timed]
    totals = Counter(reason for _, _, reasons in charted for reason in reasons)
    by_count = sorted(totals, key=lambda reason: (-totals[reason], reason))
    # "other" standing for a single reason would hide its name for nothing: name it instead
    named = by_count if len(by_count) <= TOP_REASONS + 1 else by_count[:TOP_REASONS]
    label = {reason: reason if reason in named else OTHER for reason in totals}
    first = min(stamp for _, stamp, _ in timed)
    last = max(stamp for _, stamp, _ in timed)
    size = bucket_size(last - first)
    start = first - first % size
    count = (last - start) // size + 1
    per_partner: dict[str, list[Counter[str]]] = {}
    records: Counter[str] = Counter()
    for partner, stamp, reasons in charted:
        if partner not in per_partner:
            per_partner[partner] = [Counter() for _ in range(count)]
        if not reasons:
            continue
        bucket = per_partner[partner][(stamp - start) // size]
        records[partner] += 1
        for reason in reasons:
            bucket[label[reason]] += 1
    legend_names = named + ([OTHER] if len(named) < len(totals) else [])
    legend_totals = Counter({name: 0 for name in legend_names})
    for reason, total in totals.items():
        legend_totals[label[reason]] += total
    partners = tuple(
        PartnerSeries(
            partner,
            records[partner],
            tuple(tuple((name, c[name]) for name in legend_names if c[name]) for c in series),
            apart[partner],
        )
        for partner, series in sorted(per_partner.items())
    )
    untimed = len(with_reasons) - len(timed)
    legend = tuple((n, legend_totals[n]) for n in legend_names)
    return Timeline(start, size, legend, partners, untimed, sum(apart.values()))


def reasons_explained(result: ReplayResult) -> list[tuple[str, int, str]]:
    """Every reason code the selected records carry: (code, records, its one-line explanation)."""
    counts = Counter(reason for outcome in result.outcomes for reason in reasons_of(outcome))
    return [
        (reason, n, explain(reason) or "not a reason code the guard writes")
        for reason, n in sorted(counts.items())
    ]


# ---- examples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleGroup:
    """Examples of one kind (a status), with the columns that vary; constant ones stated once."""

    status: Status
    level: Level
    total: int
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    constant: tuple[tuple[str, str], ...]


def source_text(outcome: Outcome) -> str:
    """Where a record came from: its recorded source, or where it was read (invalid records)."""
    source = outcome.blocked.get("source")
    if isinstance(source, dict):
        return f"{source.get('topic')}/{source.get('partition')}@{source.get('offset')}"
    read = outcome.blocked
    if "_line" in read:
        return f"line {read['_line']} of the file"
    return f"blocked topic {read.get('_partition', '?')}@{read.get('_offset', '?')}"


def _cells(outcome: Outcome, whatif: bool) -> tuple[str, ...]:
    event_id = outcome.blocked.get("event_id")
    rule_id = outcome.blocked.get("rule_id")
    return (
        shorten(event_id) if isinstance(event_id, str) and event_id else NOT_KNOWN,
        format_time(withheld_at(outcome)),
        outcome.partner,
        shorten(rule_id) if isinstance(rule_id, str) else NOT_KNOWN,
        shorten(", ".join(reasons_of(outcome))) or NOT_KNOWN,
        shorten(source_text(outcome)),
        shorten(outcome.why, 400),
        _change_text(outcome) if whatif else "",
    )


def _change_text(outcome: Outcome) -> str:
    return outcome.change() if outcome.whatif is not None else "not re-decided"


Row = tuple[str, ...]


def _fold(rows: list[Row]) -> tuple[Row, list[Row], list[tuple[str, str]]]:
    """Drop columns empty in every row; state columns with one value in every row once instead."""
    keep: list[int] = []
    constant: list[tuple[str, str]] = []
    for index, column in enumerate(EXAMPLE_COLUMNS):
        values = {row[index] for row in rows}
        if values == {""}:
            continue
        if len(rows) > 1 and len(values) == 1 and column not in IDENTIFYING_COLUMNS:
            constant.append((column, next(iter(values))))
            continue
        keep.append(index)
    columns = tuple(EXAMPLE_COLUMNS[i] for i in keep)
    return columns, [tuple(row[i] for i in keep) for row in rows], constant


def example_groups(result: ReplayResult, whatif: bool) -> list[ExampleGroup]:
    """Failures first (red, then amber, each kind its own group), then verified examples.

    Verified records are many and alike: one example per (partner, reasons) combination.
    """
    groups = []
    for status in (*RED_STATUSES, *AMBER_STATUSES, "match"):
        chosen = [o for o in result.outcomes if o.status == status]
        total = len(chosen)
        if status == "match":
            seen: set[tuple[str, tuple[str, ...]]] = set()
            varied = []
            for outcome in chosen:
                key = (outcome.partner, tuple(reasons_of(outcome)))
                if key not in seen:
                    seen.add(key)
                    varied.append(outcome)
            chosen = varied
        if not chosen:
            continue
        rows = [_cells(o, whatif) for o in chosen[:EXAMPLES_PER_GROUP]]
        columns, kept, constant = _fold(rows)
        level: Level = "red" if status in RED_STATUSES else "amber" if status in AMBER_STATUSES else "green"
        groups.append(ExampleGroup(status, level, total, columns, tuple(kept), tuple(constant)))
    return groups
