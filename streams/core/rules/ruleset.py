"""Compiled rulesets: rules ready for the hot path, their digest, and partner keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import orjson

from streams.core.leakscan import LeakScanner
from streams.core.rules.condition import Condition
from streams.core.rules.model import FieldSpec, LeakScanFile, RuleFile


@dataclass(frozen=True, slots=True)
class CompiledField:
    """One output field, ready to project."""

    name: str
    path: tuple[str, ...]
    spec: FieldSpec
    pattern: re.Pattern[str] | None
    values: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CompiledEvent:
    """The fields and status conditions for one allowed event type."""

    fields: tuple[CompiledField, ...]
    signup_status: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A validated, statically checked partner rule."""

    source: RuleFile
    rule_id: str
    topic: str
    events: Mapping[str, CompiledEvent]
    condition: Condition | None

    @property
    def partner(self) -> str:
        """The partner id."""
        return self.source.partner


def compile_field(name: str, spec: FieldSpec) -> CompiledField:
    """Compile one field spec (regexes anchored as full matches)."""
    return CompiledField(
        name=name,
        path=tuple(spec.source.split(".")),
        spec=spec,
        pattern=re.compile(spec.pattern) if spec.pattern else None,
        values=frozenset(spec.values) if spec.values is not None else None,
    )


def field_spec(value: FieldSpec | str) -> FieldSpec:
    """Expand the shorthand `name: path` into a `keep` field spec."""
    return FieldSpec(source=value) if isinstance(value, str) else value


def compile_rule(rule: RuleFile) -> CompiledRule:
    """Compile a rule already validated by the loader."""
    events = {
        event_type: CompiledEvent(
            fields=tuple(compile_field(n, field_spec(s)) for n, s in spec.fields.items()),
            signup_status=frozenset(spec.signup_status) if spec.signup_status else None,
        )
        for event_type, spec in rule.events.items()
    }
    return CompiledRule(
        source=rule,
        rule_id=rule.rule_id or rule.partner,
        topic=rule.topic or f"partner.{rule.partner}.events",
        events=events,
        condition=Condition(rule.condition) if rule.condition else None,
    )


def ruleset_digest(rules: tuple[RuleFile, ...], leak_scan: LeakScanFile, tags: Mapping[str, str]) -> str:
    """A hash of the normalized ruleset: rules, leak-scan vocabulary and schema tags."""
    normalized = {
        "rules": [r.model_dump(mode="json", by_alias=True) for r in rules],
        "leak_scan": leak_scan.model_dump(mode="json"),
        "tags": dict(tags),
    }
    return "sha256:" + hashlib.sha256(orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything `decide` needs besides the record and the state: rules, scanner, keys."""

    rules: tuple[CompiledRule, ...]
    leak_scanner: LeakScanner
    digest: str
    keys: Mapping[str, bytes] = field(default_factory=dict)
    vocabulary: LeakScanFile = field(default_factory=LeakScanFile)
    tags: Mapping[str, str] = field(default_factory=dict)

    def with_keys(self, keys: Mapping[str, bytes]) -> Ruleset:
        """The same ruleset with partner HMAC keys (never part of the digest)."""
        return replace(self, keys=dict(keys))

    def rule(self, partner: str) -> CompiledRule:
        """The rule of one partner."""
        for compiled in self.rules:
            if compiled.partner == partner:
                return compiled
        raise KeyError(partner)

    @property
    def partners(self) -> tuple[str, ...]:
        """Partner ids in rule order."""
        return tuple(r.partner for r in self.rules)
