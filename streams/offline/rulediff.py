"""`partner-guard rules diff OLD NEW`: what a rule change does to each partner.

Structure: event types and fields added, removed or changed (source, transform, checks).
With `--sample FILE` (decide-format JSON Lines), every decision that changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.core.models import Decision
from streams.core.rules.ruleset import Ruleset
from streams.offline.cases import decide_line


@dataclass
class PartnerDiff:
    """The changes for one partner."""

    partner: str
    status: str = "changed"  # added | removed | changed | unchanged
    lines: list[str] = field(default_factory=list)


def _fields(ruleset: Ruleset, partner: str) -> dict[str, dict[str, Any]]:
    rule = ruleset.rule(partner)
    return {
        event_type: {f.name: f.spec.model_dump(by_alias=True, exclude_defaults=True) for f in spec.fields}
        for event_type, spec in rule.events.items()
    }


def structural_diff(old: Ruleset, new: Ruleset) -> list[PartnerDiff]:
    """Per partner: allowed event types and fields, before and after."""
    diffs = []
    for partner in dict.fromkeys((*old.partners, *new.partners)):
        if partner not in new.partners:
            diffs.append(PartnerDiff(partner, "removed", ["partner removed: receives nothing"]))
            continue
        if partner not in old.partners:
            types = ", ".join(new.rule(partner).events)
            diffs.append(PartnerDiff(partner, "added", [f"partner added: receives {types}"]))
            continue
        before, after = _fields(old, partner), _fields(new, partner)
        diff = PartnerDiff(partner)
        for event_type in dict.fromkeys((*before, *after)):
            if event_type not in after:
                diff.lines.append(f"- event type {event_type}")
            elif event_type not in before:
                diff.lines.append(f"+ event type {event_type}: fields {', '.join(after[event_type])}")
            else:
                for name in dict.fromkeys((*before[event_type], *after[event_type])):
                    was, now = before[event_type].get(name), after[event_type].get(name)
                    if was is None:
                        diff.lines.append(f"+ {event_type}.{name} {now}")
                    elif now is None:
                        diff.lines.append(f"- {event_type}.{name}")
                    elif was != now:
                        diff.lines.append(f"~ {event_type}.{name} {was} -> {now}")
        old_source = old.rule(partner).source.model_dump(exclude={"events"})
        new_source = new.rule(partner).source.model_dump(exclude={"events"})
        for key in old_source:
            if old_source[key] != new_source[key]:
                diff.lines.append(f"~ {key}: {old_source[key]} -> {new_source[key]}")
        if not diff.lines:
            diff.status = "unchanged"
        diffs.append(diff)
    return diffs


def _summary(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "verdict": decision.verdict,
        "reasons": list(decision.reasons),
        "fields": sorted(decision.record or {}),
    }


def sample_diff(old: Ruleset, new: Ruleset, sample: Path) -> list[dict[str, Any]]:
    """Decisions on the sample that change between the rulesets."""
    changes = []
    with sample.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            before = {d.partner: d for d in decide_line(line.rstrip(b"\r\n"), old)}
            after = {d.partner: d for d in decide_line(line.rstrip(b"\r\n"), new)}
            for partner in dict.fromkeys((*before, *after)):
                was, now = _summary(before.get(partner)), _summary(after.get(partner))
                if was != now:
                    either = after.get(partner) or before.get(partner)
                    changes.append(
                        {
                            "line": number,
                            "partner": partner,
                            "event_id": either.event_id if either else None,
                            "before": was,
                            "after": now,
                        }
                    )
    return changes


def dumps_change(change: dict[str, Any]) -> str:
    """One change as a JSON line."""
    return orjson.dumps(change).decode()
