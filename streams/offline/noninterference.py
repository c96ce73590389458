"""P11, checked: varying what partners may not learn never changes what they get.

For an event, every *protected* field — tagged `content`, `url`, `search` or `pii:*` in the
event schema — is given other values (or removed), keeping the event valid and the consent
state (stored consent records, sign-up status, the effective consent) fixed: the
consent-tagged signals whose absence and `false` mean the same to the guard
(`CONSENT_NEUTRAL`) only switch between the two, so a rule that read their presence would
show. Every partner's verdict, reasons and record must stay the same, with two stated
exceptions:

- **the allowed transform of a PII field**: output fields projected from a `pii:*` field
  (a hashed email, a truncated IP) carry that transform of the new value, so they are
  left out of the comparison; so is a `required_field_missing` block that names only such
  fields;
- **the leak scan**: a record whose allowed fields happen to carry one of the event's own
  protected values (a campaign id equal to the page URL) is blocked as `leak_detected`
  (`raw_value`). The scan is what makes P1 hold, so this dependence is by design: it only
  ever turns a forward into a block, never the reverse, and never changes a record.

`partner-guard rules test` runs this on every golden case of a ruleset (a fixed seed, a
bounded number of variants), and the Hypothesis tests run it on generated events and rules.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import orjson

from streams.core.models import Decision
from streams.core.rules.ruleset import Ruleset
from streams.core.schema import load_schema_json, privacy_tags
from streams.offline.cases import decide_case

PROTECTED_TAGS = frozenset({"content", "url", "search"})
LEAK_EXCEPTION = "leak_detected"
DEFAULT_SEED = 11
# Consent signals the guard reads as `bool(value)`: absent and false are the same consent.
CONSENT_NEUTRAL: Mapping[str, Any] = {"context.consent.gpc": False, "context.consent.dnt": False}
DEFAULT_VARIANTS_PER_CASE = 8

# Values a data engineer's rule must be indifferent to; a mix of the protected kinds and
# of plain values that allowed fields also take (so the leak-scan exception is exercised).
SAMPLE_TEXT = (
    "https://www.example.com/title/80100172",
    "example.com/browse/genre/83",
    "Stranger Things",
    "Dark",
    "80100172",
    "how to watch squid game free",
    "person@example.com",
    "+1 650 555 1212",
    "203.0.113.7",
    "2001:db8::1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0)",
    "US",
    "ios",
    "stranger",
    "",
    " ",
    "x" * 300,
)


def is_protected(tag: str) -> bool:
    """Tags whose value or presence a decision may not depend on (besides PII transforms)."""
    return tag in PROTECTED_TAGS or tag.startswith("pii:")


def _leaf_type(field_type: Any) -> str | None:
    types = field_type if isinstance(field_type, list) else [field_type]
    for typ in types:
        if isinstance(typ, dict):
            return "record" if typ.get("type") == "record" else str(typ.get("type"))
        if typ != "null":
            return str(typ)
    return None


@cache
def protected_fields() -> Mapping[str, str]:
    """Dotted paths of the protected leaf fields, with their Avro type (string, array, int, long)."""
    out: dict[str, str] = {}
    tags = privacy_tags()

    def walk(fields: list[dict[str, Any]], prefix: str) -> None:
        for fld in fields:
            path = prefix + fld["name"]
            kind = _leaf_type(fld["type"])
            if kind == "record":
                types = fld["type"] if isinstance(fld["type"], list) else [fld["type"]]
                walk(next(t for t in types if isinstance(t, dict))["fields"], path + ".")
            elif is_protected(tags.tag(path) or "") and kind is not None:
                out[path] = kind

    walk(load_schema_json()["fields"], "")
    return out


def with_values(event: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `event` with protected fields set (None removes them).

    Presence is information too (P11): a protected field is added where it was absent,
    creating the records that hold it (`user` for `user.email`), and a record that only
    held protected fields goes when they are removed. A `CONSENT_NEUTRAL` signal is touched
    only inside a `context.consent` that exists, and only when it is absent or neutral
    already (a signal that says something is consent state, kept).
    """
    out = copy.deepcopy(dict(event))
    emptied: list[tuple[str, ...]] = []
    for path, value in values.items():
        *parents, leaf = path.split(".")
        consent_signal = path in CONSENT_NEUTRAL
        node: Any = out
        for part in parents:
            if isinstance(node, dict) and part not in node and value is not None and not consent_signal:
                node[part] = {}  # adding the field brings its record with it
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if consent_signal and node.get(leaf) not in (None, CONSENT_NEUTRAL[path]):
            continue  # a signal that says something (gpc: true) is consent state: kept
        if value is None:
            if leaf in node:
                node.pop(leaf)
                emptied.append(tuple(parents))
        else:
            node[leaf] = value
    for record in sorted(set(emptied), key=len, reverse=True):
        _drop_if_empty(out, record)
    return out


def _drop_if_empty(event: dict[str, Any], parents: tuple[str, ...]) -> None:
    """Remove the records along `parents` that removing protected fields left empty (deepest first)."""
    for depth in range(len(parents), 0, -1):
        *above, name = parents[:depth]
        node: Any = event
        for part in above:
            node = node.get(part) if isinstance(node, dict) else None
        if not (isinstance(node, dict) and node.get(name) == {}):
            return
        node.pop(name)


def random_values(rng: random.Random) -> dict[str, Any]:
    """One seeded assignment of every protected field: absent, or a value of its type."""
    values: dict[str, Any] = {}
    for path, kind in protected_fields().items():
        if rng.random() < 0.25:
            values[path] = None
        elif kind == "string":
            values[path] = rng.choice(SAMPLE_TEXT)
        elif kind == "array":
            values[path] = rng.sample(SAMPLE_TEXT, rng.randint(0, 3))
        else:
            values[path] = rng.randint(0, 10**9)
    for path, neutral in CONSENT_NEUTRAL.items():
        values[path] = rng.choice((None, neutral))
    return values


def _pii_outputs(ruleset: Ruleset) -> Mapping[str, frozenset[str]]:
    """Per partner, the output names projected from a pii:* field (by any event type)."""
    tags = privacy_tags()
    return {
        rule.partner: frozenset(
            f.name
            for event in rule.events.values()
            for f in event.fields
            if (tags.tag(f.spec.source) or "").startswith("pii:")
        )
        for rule in ruleset.rules
    }


def _comparable(decision: Decision, masked: frozenset[str]) -> tuple[Any, ...]:
    record = {k: v for k, v in (decision.record or {}).items() if k not in masked}
    return decision.verdict, decision.reasons, orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _explained(blocked: Decision, other: Decision, masked: frozenset[str]) -> bool:
    """The stated exceptions: the leak scan's raw-value block, or a missing required PII output."""
    if blocked.verdict != "block" or other.verdict != "forward":
        return False
    if blocked.reasons == (LEAK_EXCEPTION,):
        return bool(blocked.details) and all(d.endswith(": raw_value") for d in blocked.details)
    if blocked.reasons == ("required_field_missing",) and blocked.details:
        missing = blocked.details[0].removeprefix("required: ").split(", ")
        return all(name in masked for name in missing)
    return False


def interference(
    ruleset: Ruleset, before: list[Decision], after: list[Decision], partner: str | None = None
) -> list[str]:
    """How `after` differs from `before` beyond the stated exceptions (empty: none)."""
    found = []
    masks = _pii_outputs(ruleset)
    for a, b in zip(before, after, strict=True):
        if partner is not None and a.partner != partner:
            continue
        masked = masks.get(a.partner, frozenset())
        if _comparable(a, masked) == _comparable(b, masked):
            continue
        if _explained(a, b, masked) or _explained(b, a, masked):
            continue
        found.append(f"{a.partner}: {a.verdict} {list(a.reasons)} became {b.verdict} {list(b.reasons)}")
    return found


def check_case(
    ruleset: Ruleset, case: Mapping[str, Any], values: Mapping[str, Any], partner: str | None = None
) -> list[str]:
    """Decide a case, and the same case with protected fields replaced; the differences."""
    variant = dict(case, event=with_values(case["event"], values))
    before = decide_case(dict(case), orjson.dumps(case), ruleset)
    after = decide_case(variant, orjson.dumps(variant), ruleset)
    return interference(ruleset, before, after, partner)


def run_property(
    ruleset: Ruleset,
    cases: Iterable[Mapping[str, Any]],
    variants: int = DEFAULT_VARIANTS_PER_CASE,
    seed: int = DEFAULT_SEED,
    partner: str | None = None,
) -> tuple[int, list[str]]:
    """Check `variants` seeded variations of every case with an event object: (checked, failures)."""
    rng = random.Random(seed)
    checked, failures = 0, []
    for case in cases:
        if not isinstance(case.get("event"), dict):
            continue
        for _ in range(variants):
            values = random_values(rng)
            checked += 1
            for difference in check_case(ruleset, case, values, partner):
                changed = ", ".join(p for p, v in values.items() if v is not None) or "(all removed)"
                failures.append(
                    f"P11 non-interference: {difference} when protected fields changed ({changed})"
                )
    return checked, failures
