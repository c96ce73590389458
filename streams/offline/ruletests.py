"""`partner-guard rules test`: golden cases per partner, and reason-code coverage.

A test file (`rules/tests/<partner>.yaml`) has `partner`, optional `defaults` (deep-merged
under each case's `event`, `consent`, `signup_status`, `stale`; a `null` deletes a key)
and `cases`, each with `name`, the inputs and `expect`: `verdict`, `reasons` (exact list),
and optionally `fields` (exact values), `record_keys` (exact key set) and `absent`.
Pseudonyms use the fixed test key `rules-test-key:<partner>`.

Every case with an event is also checked for P11 non-interference
(`streams.offline.noninterference`): a fixed-seed set of variants of its protected fields
must leave the partner's decision unchanged. Test files load within the same YAML bounds
as rule files.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError

from streams.core.coverage import reachable_reasons
from streams.core.rules.boundedyaml import YamlBoundError, line_of, load_bounded
from streams.core.rules.ruleset import CompiledRule, Ruleset
from streams.offline.cases import decide_case
from streams.offline.noninterference import run_property

TESTS_SUBDIR = "tests"


def test_key(partner: str) -> bytes:
    """The fixed, public HMAC key rule tests run with."""
    return f"rules-test-key:{partner}".encode()


def deep_merge(base: Any, override: Any) -> Any:
    """Merge `override` into `base`: mappings recursively, `None` deletes, others replace."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = deep_merge(base.get(key), value)
        return merged
    return override


def _plain(node: Any) -> Any:
    return orjson.loads(orjson.dumps(node, default=str))


class _StrictTestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expectation(_StrictTestModel):
    """What a case expects; every key is checked, none is optional by accident."""

    verdict: Literal["forward", "block"] | None = None
    reasons: list[str] | None = None
    fields: dict[str, Any] | None = None
    record_keys: list[str] | None = None
    absent: list[str] | None = None


class CaseInputs(_StrictTestModel):
    """The inputs a case (or the file's `defaults`) may set."""

    event: dict[str, Any] | str | None = None
    consent: list[Any] | None = None
    signup_status: dict[str, Any] | None = None
    stale: bool | None = None


class TestCase(CaseInputs):
    """One golden case."""

    name: str | None = None
    expect: Expectation = Field(default_factory=Expectation)


class RuleTestFile(_StrictTestModel):
    """A partner's rule-test file."""

    partner: str
    defaults: CaseInputs = CaseInputs()
    cases: list[TestCase] = Field(min_length=1)


def _did_you_mean(model: type[BaseModel], key: str) -> str:
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else f"allowed: {', '.join(model.model_fields)}"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model that owns the last key of a validation error's location."""
    model: type[BaseModel] = RuleTestFile
    for part in loc[:-1]:
        if part == "defaults":
            model = CaseInputs
        elif part == "cases":
            model = TestCase
        elif part == "expect":
            model = Expectation
    return model


def validate_test_file(path: Path, doc: Any) -> list[str]:
    """Every problem of a test file's structure, with file, line and a fix."""
    if not isinstance(doc, CommentedMap):
        return [f"{path}:1: not a YAML mapping — fix: start the file with `partner: <id>`"]
    try:
        RuleTestFile.model_validate(_plain(doc))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if p not in ("str", "dict[str,any]"))
            where = ".".join(str(p) for p in loc) or "(file)"
            if error["type"] == "extra_forbidden":
                fix = _did_you_mean(_model_at(loc), str(loc[-1]))
                message = f"unknown key `{loc[-1]}` at {where}"
            else:
                fix = "correct the value (see docs/rules.md)"
                message = f"{where}: {error['msg']}"
            problems.append(f"{path}:{line_of(doc, loc)}: {message} — fix: {fix}")
        return problems
    return []


@dataclass
class PartnerResult:
    """The outcome of one partner's test file."""

    partner: str
    file: str
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)
    uncovered: dict[str, str] = field(default_factory=dict)
    noninterference_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when every case passed and every possible reason code is covered."""
        return not self.failures and not self.uncovered


def _allowed_values(rule: CompiledRule, event_type: object, name: str) -> str:
    event = rule.events.get(str(event_type))
    for fld in event.fields if event else ():
        if fld.name == name and fld.values is not None:
            return f" (allowed values: {', '.join(sorted(fld.values))})"
    return ""


def _check(
    expect: Mapping[str, Any], got: dict[str, Any], rule: CompiledRule, event_type: object
) -> list[str]:
    problems = []
    if "verdict" in expect and got["verdict"] != expect["verdict"]:
        because = f" (reasons {got['reasons']})" if got["reasons"] else ""
        problems.append(f"verdict {got['verdict']!r}{because}, expected {expect['verdict']!r}")
    if "reasons" in expect and got["reasons"] != list(expect["reasons"]):
        problems.append(f"reasons {got['reasons']}, expected {list(expect['reasons'])}")
    record = got["record"] or {}
    for key, value in (expect.get("fields") or {}).items():
        if record.get(key) != value:
            allowed = _allowed_values(rule, event_type, key)
            problems.append(f"field {key} = {record.get(key)!r}, expected {value!r}{allowed}")
    if "record_keys" in expect and sorted(record) != sorted(expect["record_keys"]):
        problems.append(f"record keys {sorted(record)}, expected {sorted(expect['record_keys'])}")
    for key in expect.get("absent") or ():
        if key in record:
            problems.append(f"field {key} present, expected absent")
    return problems


def run_file(path: Path, ruleset: Ruleset) -> PartnerResult:
    """Run the cases of one test file against the partner it names."""
    try:
        doc = load_bounded(path)
    except YamlBoundError as exc:
        return PartnerResult("?", str(path), failures=[f"{path}:{exc.line}: {exc.message}"])
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        return PartnerResult("?", str(path), failures=[f"{path}:{line}: YAML error: {exc.problem}"])
    structure = validate_test_file(path, doc)
    if structure:
        partner_name = str(doc.get("partner", "?")) if isinstance(doc, CommentedMap) else "?"
        return PartnerResult(partner_name, str(path), failures=structure)
    partner = str(doc["partner"])
    result = PartnerResult(partner, str(path))
    if partner not in ruleset.partners:
        result.failures.append(f"{path}:1: no rule for partner '{partner}'")
        return result
    keyed = ruleset.with_keys({p: test_key(p) for p in ruleset.partners})
    defaults = _plain(doc.get("defaults") or {})
    index = ruleset.partners.index(partner)
    property_cases: list[tuple[int, str, dict[str, Any]]] = []
    for position, case_node in enumerate(doc["cases"]):
        line = doc["cases"].lc.item(position)[0] + 1
        case = _plain(case_node)
        name = case.get("name", f"case {position + 1}")
        inputs = deep_merge(defaults, {k: v for k, v in case.items() if k not in ("name", "expect")})
        if isinstance(case.get("event"), str):
            inputs["event"] = case["event"]
        property_cases.append((line, name, inputs))
        decision = decide_case(inputs, orjson.dumps(inputs), keyed)[index]
        got = {
            "verdict": decision.verdict,
            "reasons": list(decision.reasons),
            "record": decision.record,
        }
        result.covered.update(decision.reasons)
        event = inputs.get("event")
        event_type = event.get("event_type") if isinstance(event, dict) else None
        problems = _check(case.get("expect") or {}, got, ruleset.rule(partner), event_type)
        if problems:
            detail = "; ".join(problems)
            details = f" (details: {list(decision.details)})" if decision.details else ""
            result.failures.append(f"{path}:{line}: {name}: {detail}{details}")
        else:
            result.passed += 1
    reachable = reachable_reasons(ruleset.rule(partner))
    result.uncovered = {r: reachable[r] for r in sorted(reachable) if r not in result.covered}
    for line, name, inputs in property_cases:
        seed = zlib.crc32(name.encode())  # a case's variants do not move when others are added
        checked, failures = run_property(keyed, [inputs], seed=seed, partner=partner)
        result.noninterference_checked += checked
        result.failures.extend(f"{path}:{line}: {name}: {failure}" for failure in failures)
    return result


def run_rule_tests(rules_dir: Path, ruleset: Ruleset) -> list[PartnerResult]:
    """Run every test file; a partner without one is a failure."""
    test_dir = rules_dir / TESTS_SUBDIR
    files = sorted(test_dir.glob("*.yaml")) if test_dir.is_dir() else []
    results = [run_file(path, ruleset) for path in files]
    tested = {r.partner for r in results}
    for partner in ruleset.partners:
        if partner not in tested:
            results.append(
                PartnerResult(
                    partner,
                    str(test_dir / f"{partner}.yaml"),
                    failures=[f"no test file for partner '{partner}'"],
                )
            )
    return results
