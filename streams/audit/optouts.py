"""`partner-guard replay optouts`: the opt-out and deletion notices sent, per partner.

Reads every partner's notice topic (`partner.<id>.optouts`, or the rule's
`optout_notices.topic`) `read_committed`, keeps the notices sent at or after `--since`
(their Kafka timestamp: when the guard sent them), and counts them per partner and kind.
Nothing here prints an identifier: a listing shows each notice's id, kind, choices, time and
the names of the identifier fields it carried.
"""

from __future__ import annotations

import html
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.audit.source import read_to_end
from streams.core.notices import NOTICE_FORMAT


@dataclass
class SentNotice:
    """One notice as read back (no identifier values)."""

    partner: str
    notice_id: str
    kind: str
    choices: list[str]
    changed_at: str
    fields: list[str]
    sent_ms: int | None


@dataclass
class NoticeReport:
    """The notices read back, and what could not be read."""

    notices: list[SentNotice] = field(default_factory=list)
    invalid: int = 0
    missing_topics: list[str] = field(default_factory=list)

    def counts(self) -> Counter[tuple[str, str]]:
        """Notices per (partner, kind)."""
        return Counter((n.partner, n.kind) for n in self.notices)


def parse_notice(raw: bytes | None, partner: str, sent_ms: int | None) -> SentNotice | None:
    """A notice record as sent, or None when it is not one of this partner's notices."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != NOTICE_FORMAT or doc.get("partner") != partner:
        return None
    identifiers = doc.get("identifiers")
    choices = doc.get("choices")
    return SentNotice(
        partner,
        str(doc.get("notice_id")),
        str(doc.get("kind")),
        [str(c) for c in choices] if isinstance(choices, list) else [],
        str(doc.get("changed_at")),
        sorted(identifiers) if isinstance(identifiers, dict) else [],
        sent_ms,
    )


def read_notices(
    kafka_config: dict[str, Any], topics: Mapping[str, str], since_ms: int | None
) -> NoticeReport:
    """Every notice on the partners' notice topics sent at or after `since_ms`."""
    report = NoticeReport()
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"partner-guard-optouts-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        for partner, topic in topics.items():
            listed = metadata.topics.get(topic)
            if listed is None or listed.error is not None:
                report.missing_topics.append(topic)
                continue
            partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in listed.partitions]
            for message in read_to_end(consumer, partitions):
                kind, stamp = message.timestamp()
                sent = stamp if kind else None
                if since_ms is not None and sent is not None and sent < since_ms:
                    continue
                notice = parse_notice(message.value(), partner, sent)
                if notice is None:
                    report.invalid += 1
                else:
                    report.notices.append(notice)
            consumer.unassign()
    finally:
        consumer.close()
    return report


@dataclass
class NoticeSection:
    """What the replay report's notices section shows."""

    since: str | None
    rows: list[tuple[str, int, int]]  # partner, opt_out, deletion
    notes: list[str]


def report_section(report: NoticeReport, partners: list[str], since: str | None) -> NoticeSection:
    """The replay report's section: counts per partner and kind."""
    counts = report.counts()
    rows = [(p, counts[(p, "opt_out")], counts[(p, "deletion")]) for p in partners]
    notes = [f"records that are not notices: {report.invalid:,}"] if report.invalid else []
    notes += [f"topic {t} not found: no notice sent there yet" for t in report.missing_topics]
    return NoticeSection(since, rows, notes)


def summary_lines(report: NoticeReport, partners: list[str]) -> Iterator[str]:
    """One line per partner: notices by kind (every partner listed, zero included)."""
    counts = report.counts()
    for partner in partners:
        kinds = ", ".join(f"{k} {counts[(partner, k)]:,}" for k in ("opt_out", "deletion"))
        yield f"{partner}: {kinds}"
    if report.invalid:
        yield f"records that are not notices: {report.invalid:,}"
    for topic in report.missing_topics:
        yield f"topic {topic} not found: no notice sent there yet"


def render_html(report: NoticeReport, partners: list[str], since: str | None) -> str:
    """A self-contained HTML section: counts per partner and kind, then every notice."""
    counts = report.counts()
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td>"
        f"<td>{counts[(p, 'opt_out')]}</td><td>{counts[(p, 'deletion')]}</td></tr>"
        for p in partners
    )
    listed = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (n.partner, n.kind, ", ".join(n.choices), n.changed_at, ", ".join(n.fields), n.notice_id)
        )
        + "</tr>"
        for n in report.notices
    )
    title = "Opt-out and deletion notices" + (f" since {html.escape(since)}" if since else "")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<section id='optout-notices'><h2>{title}</h2>"
        "<table><tr><th>partner</th><th>opt_out</th><th>deletion</th></tr>"
        f"{rows}</table><h3>Notices</h3><table><tr><th>partner</th><th>kind</th><th>choices</th>"
        f"<th>changed at</th><th>identifier fields</th><th>notice id</th></tr>{listed}</table>"
        "</section></body></html>"
    )


def write_html(report: NoticeReport, partners: list[str], since: str | None, path: Path) -> None:
    """Write `render_html` to `path`."""
    path.write_text(render_html(report, partners, since), encoding="utf-8")
