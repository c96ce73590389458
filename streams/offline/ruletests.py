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

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError

from streams.core.coverage import possible_reasons
from streams.core.rules.boundedyaml import YamlBoundError, load_bounded
from streams.core.rules.ruleset import Ruleset
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


@dataclass
class PartnerResult:
    """The outcome of one partner's test file."""

    partner: str
    file: str
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)
    uncovered: list[str] = field(default_factory=list)
    noninterference_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when every case passed and every possible reason code is covered."""
        return not self.failures and not self.uncovered


def _check(expect: Mapping[str, Any], got: dict[str, Any]) -> list[str]:
    problems = []
    if "verdict" in expect and got["verdict"] != expect["verdict"]:
        problems.append(f"verdict {got['verdict']!r}, expected {expect['verdict']!r}")
    if "reasons" in expect and got["reasons"] != list(expect["reasons"]):
        problems.append(f"reasons {got['reasons']}, expected {list(expect['reasons'])}")
    record = got["record"] or {}
    for key, value in (expect.get("fields") or {}).items():
        if record.get(key) != value:
            problems.append(f"field {key} = {record.get(key)!r}, expected {value!r}")
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
    if not isinstance(doc, CommentedMap) or "partner" not in doc or "cases" not in doc:
        return PartnerResult("?", str(path), failures=[f"{path}:1: needs `partner` and `cases`"])
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
        problems = _check(case.get("expect") or {}, got)
        if problems:
            detail = "; ".join(problems)
            result.failures.append(f"{path}:{line}: {name}: {detail} (details: {list(decision.details)})")
        else:
            result.passed += 1
    result.uncovered = sorted(possible_reasons(ruleset.rule(partner)) - result.covered)
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
