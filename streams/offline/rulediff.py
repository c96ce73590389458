"""`partner-guard rules diff OLD NEW`: what a rule change does to each partner.

The structural diff is total over what the ruleset digest covers: every attribute of every
rule (event types, fields, checks, consent, sign-up status, jurisdictions, condition,
identifier style, topic), the leak-scan vocabulary and the schema's privacy tags. Two
rulesets with different digests always show at least one change. With `--sample FILE`
(decide-format JSON Lines), every decision that changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.core.models import Decision
from streams.core.rules.model import RuleFile
from streams.core.rules.ruleset import Ruleset, field_spec
from streams.offline.cases import decide_line

Op = Literal["added", "removed", "changed"]
_SIGNS: Mapping[str, str] = {"added": "+", "removed": "-", "changed": "~"}


@dataclass(frozen=True, slots=True)
class Change:
    """One attribute that differs: its dotted path and the JSON values before and after."""

    path: str
    op: Op
    before: Any = None
    after: Any = None

    def text(self) -> str:
        """One readable line: `~ events.app_open.signup_status: ["prospect"] -> [...]`."""
        if self.op == "added":
            return f"+ {self.path}: {_json(self.after)}"
        if self.op == "removed":
            return f"- {self.path}: {_json(self.before)}"
        return f"~ {self.path}: {_json(self.before)} -> {_json(self.after)}"


@dataclass
class PartnerDiff:
    """The changes for one partner."""

    partner: str
    status: str = "changed"  # added | removed | changed | unchanged
    changes: list[Change] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """The changes as readable lines."""
        return [c.text() for c in self.changes]


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def rule_document(rule: RuleFile) -> dict[str, Any]:
    """A rule as plain JSON with every default filled in and field shorthands expanded."""
    doc: dict[str, Any] = rule.model_dump(mode="json", by_alias=True)
    for event_type, spec in rule.events.items():
        doc["events"][event_type]["fields"] = {
            name: field_spec(value).model_dump(mode="json", by_alias=True)
            for name, value in spec.fields.items()
        }
    return doc


def diff_values(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every difference between two JSON values; mappings recurse, anything else compares whole."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        changes: list[Change] = []
        for key in dict.fromkeys((*before, *after)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                changes.append(Change(sub, "removed", before=before[key]))
            elif key not in before:
                changes.append(Change(sub, "added", after=after[key]))
            else:
                changes.extend(diff_values(before[key], after[key], sub))
        return changes
    if before != after:
        return [Change(path, "changed", before, after)]
    return []


def diff_rules(old: RuleFile, new: RuleFile) -> list[Change]:
    """Every attribute of one partner's rule that differs."""
    return diff_values(rule_document(old), rule_document(new))


def structural_diff(old: Ruleset, new: Ruleset) -> list[PartnerDiff]:
    """Per partner: every attribute of its rule, before and after."""
    diffs = []
    for partner in dict.fromkeys((*old.partners, *new.partners)):
        if partner not in new.partners:
            diffs.append(PartnerDiff(partner, "removed", [Change("partner", "removed", before=partner)]))
        elif partner not in old.partners:
            added = rule_document(new.rule(partner).source)
            diffs.append(PartnerDiff(partner, "added", [Change("rule", "added", after=added)]))
        else:
            changes = diff_rules(old.rule(partner).source, new.rule(partner).source)
            diffs.append(PartnerDiff(partner, "changed" if changes else "unchanged", changes))
    return diffs


def ruleset_wide_diff(old: Ruleset, new: Ruleset) -> list[Change]:
    """Changes that affect every partner: the leak-scan vocabulary and the schema's privacy tags."""
    return [
        *diff_values(
            old.vocabulary.model_dump(mode="json"), new.vocabulary.model_dump(mode="json"), "leak_scan"
        ),
        *diff_values(dict(old.tags), dict(new.tags), "schema_tags"),
    ]


def diff_report(old: Ruleset, new: Ruleset, sample_changes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The whole diff as one JSON-ready document (`rules diff --json`)."""
    return {
        "digest": {"before": old.digest, "after": new.digest},
        "ruleset": [asdict(c) for c in ruleset_wide_diff(old, new)],
        "partners": [
            {"partner": d.partner, "status": d.status, "changes": [asdict(c) for c in d.changes]}
            for d in structural_diff(old, new)
        ],
        "sample": sample_changes,
    }


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
