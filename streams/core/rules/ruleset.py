"""Compiled rulesets: rules ready for the hot path, their digest, and partner keys.

Rule patterns run on RE2, whose matching time is linear in the input (no backtracking);
kept values are length-checked before any `values:` lookup or pattern match.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from streams.core.leakscan import LeakScanner
from streams.core.regex import LinearRegex, compile_linear
from streams.core.rules.condition import Condition
from streams.core.rules.model import FieldSpec, LeakScanFile, OptoutNotices, RuleFile

MAX_KEPT_LENGTH = 1_024  # longest kept string a rule may allow; longer values are dropped
_UNBOUNDED = 1 << 32


def compile_pattern(pattern: str) -> LinearRegex:
    """Compile a rule pattern with RE2 (applied as a whole match); raises `LinearRegexError`
    for what RE2 refuses (backreferences, lookaround)."""
    return compile_linear(pattern, capture=False)


def pattern_max_length(pattern: str) -> int | None:
    """The longest string the pattern can match, or None when unbounded or not inferable.

    Inferred with Python's regex parser, which reads the common syntax RE2 shares; a
    pattern using RE2-only syntax needs an explicit `max_length`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, longest = re._parser.parse(pattern).getwidth()  # type: ignore[attr-defined]
    except (re.error, RecursionError, OverflowError):
        return None
    return int(longest) if longest < _UNBOUNDED else None


def kept_max_length(spec: FieldSpec, event_types: Collection[str]) -> int | None:
    """The length bound of a kept value: explicit, or implied by values/pattern/event types."""
    bounds = [spec.max_length] if spec.max_length is not None else []
    if spec.values is not None:
        bounds.append(max((len(v) for v in spec.values), default=0))
    if spec.pattern is not None and (implied := pattern_max_length(spec.pattern)) is not None:
        bounds.append(implied)
    if spec.source == "event_type" and event_types:  # only the rule's own event types get here
        bounds.append(max(len(t) for t in event_types))
    return min(bounds) if bounds else None


@dataclass(frozen=True, slots=True)
class CompiledField:
    """One output field, ready to project."""

    name: str
    path: tuple[str, ...]
    spec: FieldSpec
    pattern: LinearRegex | None
    values: frozenset[str] | None
    max_length: int = MAX_KEPT_LENGTH

    def refuse_kept(self, text: str) -> str | None:
        """Why a kept value may not leave (`too_long` is checked before any matching), or None."""
        if len(text) > self.max_length:
            return "too_long"
        if self.values is not None and text not in self.values:
            return "value_not_allowed"
        if self.pattern is not None and not self.pattern.matches_whole(text):
            return "pattern_mismatch"
        return None


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


def compile_field(name: str, spec: FieldSpec, event_types: Collection[str] = ()) -> CompiledField:
    """Compile one field spec (RE2 patterns, applied as full matches, after the length bound)."""
    return CompiledField(
        name=name,
        path=tuple(spec.source.split(".")),
        spec=spec,
        pattern=compile_pattern(spec.pattern) if spec.pattern else None,
        values=frozenset(spec.values) if spec.values is not None else None,
        max_length=min(kept_max_length(spec, event_types) or MAX_KEPT_LENGTH, MAX_KEPT_LENGTH),
    )


def field_spec(value: FieldSpec | str) -> FieldSpec:
    """Expand the shorthand `name: path` into a `keep` field spec."""
    return FieldSpec(source=value) if isinstance(value, str) else value


def compile_rule(rule: RuleFile) -> CompiledRule:
    """Compile a rule already validated by the loader."""
    events = {
        event_type: CompiledEvent(
            fields=tuple(compile_field(n, field_spec(s), rule.events) for n, s in spec.fields.items()),
            signup_status=frozenset(spec.signup_status) if spec.signup_status else None,
        )
        for event_type, spec in rule.events.items()
    }
    return CompiledRule(
        source=rule,
        rule_id=rule.rule_id or rule.partner,
        topic=rule.output_topic,
        events=events,
        condition=Condition(rule.condition) if rule.condition else None,
    )


def _rule_for_digest(rule: RuleFile) -> dict[str, Any]:
    """The rule as the digest covers it. `optout_notices` is left out while it is the default,
    so every ruleset written before notices existed keeps its digest (replay finds it)."""
    default = rule.optout_notices == OptoutNotices()
    return rule.model_dump(mode="json", by_alias=True, exclude={"optout_notices"} if default else None)


def ruleset_digest(rules: tuple[RuleFile, ...], leak_scan: LeakScanFile, tags: Mapping[str, str]) -> str:
    """A hash of the normalized ruleset: rules, leak-scan vocabulary and schema tags."""
    normalized = {
        "rules": [_rule_for_digest(r) for r in rules],
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
    # The event schema the rules were checked against when it is not the shipped one (a past
    # commit's, in replay): Avro originals are read into it, as that commit's guard read them.
    event_schema: Mapping[str, Any] | None = None

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
