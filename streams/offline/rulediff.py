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
from streams.core.rules.model import FieldSpec, RuleFile
from streams.core.rules.ruleset import Ruleset, field_spec
from streams.offline.cases import decide_line

Op = Literal["added", "removed", "changed"]
_SIGNS: Mapping[str, str] = {"added": "+", "removed": "-", "changed": "~"}
TRANSFORM_WORDS: Mapping[str, str] = {
    "keep": "kept",
    "pseudonym": "keyed pseudonym",
    "sha256_email": "hashed email",
    "sha256_phone": "hashed phone",
    "truncate_ip": "truncated IP",
    "coarsen_time": "coarsened time",
    "ad_id": "ad id, dropped under limit-ad-tracking",
}


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
    block: list[str] = field(default_factory=list)  # a new partner, as a readable block

    @property
    def lines(self) -> list[str]:
        """The changes as readable lines (a new partner as a block)."""
        return self.block or [c.text() for c in self.changes]


def _field_text(name: str, spec: FieldSpec) -> str:
    """`visit_day <- event_time (coarsened time, day)`: only the attributes that apply."""
    parts = [TRANSFORM_WORDS.get(spec.transform, spec.transform)]
    if spec.transform == "coarsen_time":
        parts.append(spec.granularity)
    if spec.values is not None:
        parts.append("values " + ", ".join(spec.values))
    if spec.pattern is not None:
        parts.append(f"pattern {spec.pattern}")
    if spec.max_length is not None:
        parts.append(f"max length {spec.max_length}")
    if spec.required:
        parts.append("required")
    return f"{name} <- {spec.source} ({'; '.join(parts)})"


def new_partner_block(rule: RuleFile) -> list[str]:
    """A new partner as a reviewer reads it: events, fields and transforms, consent, scope."""
    consent = rule.consent
    needs = [
        "interest-based ads granted" if consent.interest_based_ads == "required" else None,
        "ad cookies accepted on the web" if consent.ad_cookies_on_web == "required" else None,
        f"TCF vendor {consent.tcf.vendor_id}, purposes {list(consent.tcf.purposes)} where the GDPR applies"
        if consent.tcf
        else None,
        "Do Not Track honoured" if consent.honour_dnt else None,
    ]
    lines = [
        f"+ new partner {rule.partner} (rule {rule.rule_id or rule.partner}) -> topic "
        f"{rule.topic or f'partner.{rule.partner}.events'}",
        f"+   jurisdictions: {', '.join(rule.jurisdictions)}",
        f"+   consent needed: {', '.join(n for n in needs if n) or 'only the opt-outs every rule honours'}",
    ]
    if rule.signup_status is not None:
        allowed = ", ".join(rule.signup_status.allowed)
        lines.append(f"+   sign-up status: {allowed} (missing: {rule.signup_status.when_missing})")
    if rule.condition:
        lines.append(f"+   condition: {rule.condition}")
    lines.append(f"+   events ({len(rule.events)}):")
    for event_type, event in rule.events.items():
        status = f" (sign-up status {', '.join(event.signup_status)})" if event.signup_status else ""
        lines.append(f"+     {event_type}{status}:")
        lines += [f"+       {_field_text(n, field_spec(v))}" for n, v in event.fields.items()]
    return lines


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
            source = new.rule(partner).source
            added = rule_document(source)
            change = [Change("rule", "added", after=added)]
            diffs.append(PartnerDiff(partner, "added", change, new_partner_block(source)))
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
