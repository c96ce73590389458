"""Load a rules directory: parse YAML, validate, check statically, compile.

Every problem is reported with the file, the line, what is wrong and how to fix it, and
the guard refuses to start with a ruleset that has any.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from streams.core.consent import GDPR_REGIONS
from streams.core.errors import RefusalError
from streams.core.leakscan import LeakScanner, scanner_for
from streams.core.regex import LinearRegexError, compile_linear
from streams.core.regions import AREAS, did_you_mean, is_country, is_jurisdiction
from streams.core.rules.boundedyaml import YamlBoundError, load_bounded
from streams.core.rules.boundedyaml import line_of as _line_of
from streams.core.rules.celreach import CelSubsetError, Reach
from streams.core.rules.condition import Condition
from streams.core.rules.linkage import ad_id_linkages, is_person_derived, is_resettable_ad_id
from streams.core.rules.model import (
    ALLOWED_EVENT_TYPES,
    CONTENT_EVENT_TYPES,
    TRANSFORMS_BY_TAG,
    LeakScanFile,
    RuleFile,
)
from streams.core.rules.ruleset import (
    MAX_KEPT_LENGTH,
    Ruleset,
    compile_pattern,
    compile_rule,
    field_spec,
    kept_max_length,
    ruleset_digest,
)
from streams.core.rules.validation import explain_errors
from streams.core.schema import FORBIDDEN_TAGS, RECORD_TAG, PrivacyTags, privacy_tags, privacy_tags_of

M = TypeVar("M", bound=BaseModel)
LEAK_SCAN_FILE = "_leak-scan.yaml"
CEL_VARIABLES = frozenset({"event", "consent", "status"})
# Where in the leak-scan vocabulary each finding on an output name comes from.
_VOCABULARY_KEY_OF_FINDING = {
    "title_name": "title_names",
    "title_id": "title_id_patterns",
    "free_text": "max_words / max_tokens",
}


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One problem in a rules directory."""

    file: str
    line: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} — fix: {self.fix}"


class RulesetError(RefusalError):
    """The ruleset cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def explanation(self) -> str:
        """How many problems, then one `file:line: what — fix` line each."""
        listed = "".join(f"\n  {problem}" for problem in self.problems)
        return f"rules refused ({len(self.problems)} problem(s)):{listed}"


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    """The leak-scan vocabulary file as read, so a refusal can point into it."""

    path: str
    doc: Any

    def where(self, key: str, entry: str | None = None) -> str:
        """`file:line` of a vocabulary key, or of one entry of its list."""
        loc: tuple[int | str, ...] = (key,)
        entries = self.doc.get(key) if isinstance(self.doc, CommentedMap) else None
        if entry is not None and isinstance(entries, CommentedSeq) and entry in entries:
            loc = (key, entries.index(entry))
        return f"{self.path}:{_line_of(self.doc, loc)}"


def _read_yaml(path: Path, problems: list[RuleProblem]) -> Any | None:
    try:
        return load_bounded(path)
    except YamlBoundError as exc:
        problems.append(RuleProblem(str(path), exc.line, exc.message, exc.fix))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.append(RuleProblem(str(path), line, f"YAML error: {exc.problem}", "fix the YAML syntax"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(RuleProblem(str(path), 1, f"cannot read: {exc}", "make it a UTF-8 text file"))
    return None


def _validate(model: type[M], path: Path, doc: Any, problems: list[RuleProblem]) -> M | None:
    if not isinstance(doc, CommentedMap):
        problems.append(
            RuleProblem(str(path), 1, "not a YAML mapping", "start the file with `partner: <id>`")
        )
        return None
    try:
        return model.model_validate(_plain(doc))
    except ValidationError as exc:
        for explained in explain_errors(model, exc.errors()):
            problems.append(
                RuleProblem(str(path), _line_of(doc, explained.loc), explained.message, explained.fix)
            )
    return None


def _check_rule(
    rule: RuleFile,
    path: Path,
    doc: CommentedMap,
    scanner: LeakScanner,
    tags: PrivacyTags,
    vocabulary: _Vocabulary,
    reserved_topics: Mapping[str, str],
) -> Iterator[RuleProblem]:
    """Static checks: P2 (no content event types), P1/P6 (no tagged field leaves raw), P10,
    and no output to a topic the guard itself reads or writes."""
    file = str(path)
    if path.stem != rule.partner:
        yield RuleProblem(
            file,
            _line_of(doc, ("partner",)),
            f"file name does not match partner '{rule.partner}'",
            f"rename the file to {rule.partner}.yaml",
        )
    reserved = {_kafka_name(t): what for t, what in reserved_topics.items()}
    if _kafka_name(rule.output_topic) in reserved:
        yield RuleProblem(
            file,
            _line_of(doc, ("topic",)),
            f"topic '{rule.output_topic}' is {reserved[_kafka_name(rule.output_topic)]}",
            "use partner.<id>.events",
        )
    yield from _check_optout_notices(rule, file, doc, tags, reserved_topics)
    gdpr = [j for j in rule.jurisdictions if j in GDPR_REGIONS]
    if gdpr and rule.consent.tcf is None:
        yield RuleProblem(
            file,
            _line_of(doc, ("jurisdictions",)),
            f"jurisdictions {gdpr} fall under the GDPR but consent.tcf is not set",
            "add consent.tcf.vendor_id (the partner's GVL id) and purposes, or drop those jurisdictions",
        )
    for index, code in enumerate(rule.jurisdictions):
        yield from _jurisdiction_problems(code, file, _line_of(doc, ("jurisdictions", index)))
    if rule.condition:
        yield from _check_condition(rule.condition, file, _line_of(doc, ("condition",)), tags)
    for linkage in ad_id_linkages(rule, tags.tag, field_spec):  # P10
        yield RuleProblem(file, _line_of(doc, ("events", linkage.event_type)), linkage.message, linkage.fix)
    for event_type, spec in rule.events.items():
        at = _line_of(doc, ("events", event_type))
        if event_type in CONTENT_EVENT_TYPES:
            yield RuleProblem(
                file,
                at,
                f"event type '{event_type}' is a content event and can never be forwarded",
                "remove it; partners never receive plays, title selections, ratings, searches or page views",
            )
            continue
        if event_type not in ALLOWED_EVENT_TYPES:
            yield RuleProblem(
                file,
                at,
                f"unknown event type '{event_type}'",
                f"use one of {sorted(ALLOWED_EVENT_TYPES)}",
            )
        for name, raw_spec in spec.fields.items():
            yield from _check_field(
                file, doc, event_type, name, field_spec(raw_spec), tags.tag, scanner, vocabulary, rule.events
            )


def _kafka_name(topic: str) -> str:
    """A topic as Kafka tells topics apart: `.` and `_` collide (Kafka refuses such a pair)."""
    return topic.replace(".", "_")


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A rule as loaded, with where it came from (for ruleset-wide checks)."""

    rule: RuleFile
    path: Path
    doc: CommentedMap


def _topic_problems(loaded: list[_Loaded]) -> Iterator[RuleProblem]:
    """Every topic a rule writes (its events, its opt-out notices) belongs to exactly one
    partner, across all rule files.

    A topic is refused when another partner writes to it (explicitly, or as its default
    `partner.<id>.events` / `partner.<id>.optouts`), when it is another partner's default
    topic, or when it collides with one of those the way Kafka sees names (`.` and `_` are
    the same).
    """
    owners: dict[str, tuple[_Loaded, tuple[str, ...]]] = {}
    for entry in loaded:
        for topic, where in _written_topics(entry.rule):
            owner, owner_where = owners.setdefault(_kafka_name(topic), (entry, where))
            line = _line_of(entry.doc, where)
            if owner.rule.partner != entry.rule.partner:
                yield RuleProblem(
                    str(entry.path),
                    line,
                    f"topic '{topic}' is also written by partner '{owner.rule.partner}' "
                    f"({owner.path}:{_line_of(owner.doc, owner_where)}): each partner would read the "
                    "other's records",
                    "give every partner its own event and notice topics "
                    f"(partner.{entry.rule.partner}.events, partner.{entry.rule.partner}.optouts)",
                )
                continue
            parts = topic.split(".")
            if len(parts) >= 3 and parts[0] == "partner" and parts[-1] in ("events", "optouts"):
                default_of = ".".join(parts[1:-1])
                if default_of != entry.rule.partner:
                    yield RuleProblem(
                        str(entry.path),
                        line,
                        f"topic '{topic}' is a default topic of partner '{default_of}', not of "
                        f"'{entry.rule.partner}'",
                        f"use partner.{entry.rule.partner}.{parts[-1]}, or a name no other partner's default "
                        "can take",
                    )


def _written_topics(rule: RuleFile) -> list[tuple[str, tuple[str, ...]]]:
    """The topics a rule writes, each with the YAML place that names it."""
    topics: list[tuple[str, tuple[str, ...]]] = [
        (rule.output_topic, ("topic",) if rule.topic is not None else ("partner",))
    ]
    if rule.optout_notices.sends:
        where = ("optout_notices", "topic") if rule.optout_notices.topic else ("partner",)
        topics.append((rule.optout_topic, where))
    return topics


def _jurisdiction_problems(code: str, file: str, line: int) -> Iterator[RuleProblem]:
    """A rule's jurisdiction must be an ISO 3166-1 country or EU/EEA, as the data names it."""
    if code in AREAS or is_country(code):
        return
    if code != code.strip().upper() and (code.strip().upper() in AREAS or is_country(code.strip().upper())):
        yield RuleProblem(
            file, line, f"jurisdiction '{code}' is not written as the code", f"write '{code.strip().upper()}'"
        )
        return
    meant = did_you_mean(code)
    if "-" in code and is_jurisdiction(code.upper()):
        fix = f"list the country ('{meant}'): events are placed by country"
    elif meant is not None:
        fix = f"did you mean '{meant}'? (ISO 3166-1 alpha-2 codes, or EU / EEA)"
    else:
        fix = "use an ISO 3166-1 alpha-2 country code (US, GB, DE), or EU / EEA"
    yield RuleProblem(
        file,
        line,
        f"jurisdiction '{code}' is not an ISO 3166-1 country code; events from a code the guard "
        "cannot place are read as the strictest jurisdiction",
        fix,
    )


def _projected_identifiers(rule: RuleFile, tags: PrivacyTags) -> list[str]:
    """Output fields of any event type that carry an identifier of the person or device."""
    found: dict[str, None] = {}
    for spec in rule.events.values():
        for name, raw in spec.fields.items():
            source = field_spec(raw).source
            tag = tags.tag(source)
            if is_person_derived(source, tag) or is_resettable_ad_id(tag):
                found[name] = None
    return list(found)


def _check_optout_notices(
    rule: RuleFile, file: str, doc: CommentedMap, tags: PrivacyTags, reserved_topics: Mapping[str, str]
) -> Iterator[RuleProblem]:
    """P12: a partner that receives identifiers gets deletion notices, or the rule says why not."""
    notices = rule.optout_notices
    at = _line_of(doc, ("optout_notices",))
    if notices.sends and rule.optout_topic in {*reserved_topics, rule.output_topic}:
        what = reserved_topics.get(rule.optout_topic, "the rule's own event topic")
        yield RuleProblem(
            file, at, f"optout_notices topic '{rule.optout_topic}' is {what}", "use partner.<id>.optouts"
        )
    identifiers = _projected_identifiers(rule, tags)
    if identifiers and "deletion" not in notices.sends and notices.reason is None:
        yield RuleProblem(
            file,
            at,
            f"the rule projects identifier field(s) {identifiers} but the partner gets no deletion notices",
            "keep the default optout_notices (opt_out and deletion), or say why not: "
            "optout_notices: {kinds: none, reason: '...'}",
        )


def _unreadable(tag: str) -> bool:
    """Tags a condition may never read (P11): what partners may not learn, and raw consent."""
    return tag in FORBIDDEN_TAGS or tag == "consent" or tag.startswith("pii:")


def _protected(tag: str) -> bool:
    """Tags whose presence, too, partners may not learn (P11): content, URLs, searches, PII."""
    return tag in FORBIDDEN_TAGS or tag.startswith("pii:")


def _condition_reach_problems(reach: Reach, tags: PrivacyTags) -> Iterator[tuple[str, str]]:
    """(message, fix) for every field the condition can read but may not (P11)."""
    for path in sorted(reach.values | reach.presence):
        dotted = ".".join(path)
        tag = tags.tag(dotted)
        how = "reads" if path in reach.values else "tests the presence of"
        if tag is None:
            yield (
                f"condition {how} event.{dotted}, which the event schema does not declare",
                "read only fields declared in schemas/internal_event.avsc",
            )
        elif _unreadable(tag):
            yield (
                f"condition {how} event.{dotted}, tagged '{tag}': partners would learn it from "
                "which events arrive (P11)",
                "the guard applies consent itself; read its result (consent.*) instead"
                if tag == "consent"
                else "remove that part; decide only on untagged fields (device.platform, context.country)",
            )
        elif tag == RECORD_TAG and path in reach.values:
            hidden = sorted(p for p, t in tags.tags.items() if p.startswith(dotted + ".") and _unreadable(t))
            if hidden:
                yield (
                    f"condition reads the whole record event.{dotted} (its value, size or keys), "
                    f"reaching {', '.join(hidden)} (P11)",
                    f"read only the fields needed (event.{dotted}.<field>)",
                )
        elif tag == RECORD_TAG:  # presence only: present when any member is, protected ones too
            held = sorted(p for p, t in tags.tags.items() if p.startswith(dotted + ".") and _protected(t))
            if held:
                yield (
                    f"condition tests the presence of event.{dotted}, a record holding {', '.join(held)}: "
                    "it is there when any of them is, so partners would learn it from which events "
                    "arrive (P11)",
                    f"test the presence of the untagged field you need (has(event.{dotted}.<field>))",
                )


def _check_condition(expression: str, file: str, line: int, tags: PrivacyTags) -> Iterator[RuleProblem]:
    """The condition parses in the allowed CEL subset, compiles, and reads only what it may."""
    try:
        condition = Condition(expression)
    except CelSubsetError as exc:
        yield RuleProblem(file, line, exc.message, exc.fix)
        return
    except (ValueError, RuntimeError) as exc:
        yield RuleProblem(file, line, f"condition is not valid CEL: {exc}", "correct the CEL expression")
        return
    unknown = set(condition.variables()) - CEL_VARIABLES - condition.reach.iteration_variables
    if unknown:
        yield RuleProblem(
            file,
            line,
            f"condition uses unknown variables {sorted(unknown)}",
            "use only event, consent and status",
        )
    for message, fix in _condition_reach_problems(condition.reach, tags):
        yield RuleProblem(file, line, message, fix)


def _did_you_mean_path(source: str, tag_of: Any) -> str:
    """`did you mean 'device.platform'? else ` for a source close to a declared path, or ""."""
    declared = getattr(getattr(tag_of, "__self__", None), "tags", None)
    if not isinstance(declared, Mapping):
        return ""
    close = difflib.get_close_matches(source, [str(p) for p in declared], n=1, cutoff=0.75)
    return f"did you mean '{close[0]}'? if it is a new field, " if close else ""


def _check_field(
    file: str,
    doc: CommentedMap,
    event_type: str,
    name: str,
    spec: Any,
    tag_of: Any,
    scanner: LeakScanner,
    vocabulary: _Vocabulary,
    event_types: Collection[str] = (),
) -> Iterator[RuleProblem]:
    at = _line_of(doc, ("events", event_type, "fields", name))
    tag = tag_of(spec.source)
    if tag is None:
        yield RuleProblem(
            file,
            at,
            f"field '{name}' reads '{spec.source}', which the event schema does not declare",
            _did_you_mean_path(spec.source, tag_of)
            + "declare it with a privacy tag in schemas/internal_event.avsc first",
        )
        return
    if tag in FORBIDDEN_TAGS:
        yield RuleProblem(
            file,
            at,
            f"field '{name}' projects '{spec.source}', tagged '{tag}', which never leaves",
            "remove the field: title selections, URLs, searches and watch history are never shared",
        )
        return
    allowed = TRANSFORMS_BY_TAG.get(tag, frozenset())
    if spec.transform not in allowed:
        how = f"use transform {sorted(allowed)}" if allowed else "remove the field; it may never be projected"
        yield RuleProblem(
            file,
            at,
            f"field '{name}' projects '{spec.source}' (tagged '{tag}') with transform '{spec.transform}'",
            how,
        )
    if (spec.values is not None or spec.pattern or spec.max_length) and spec.transform != "keep":
        yield RuleProblem(
            file,
            at,
            f"field '{name}': values/pattern/max_length apply only to transform keep",
            "remove values/pattern/max_length or use transform keep",
        )
    if spec.pattern:
        try:
            compile_pattern(spec.pattern)
        except LinearRegexError as exc:
            reason = str(exc)
            yield RuleProblem(
                file,
                at,
                f"field '{name}': pattern is not valid RE2 ({reason})",
                "rewrite it without backreferences or lookaround (RE2 matches in linear time)",
            )
    if spec.transform == "keep" and tag != "time" and kept_max_length(spec, event_types) is None:
        yield RuleProblem(
            file,
            at,
            f"field '{name}' keeps '{spec.source}' as free text of unbounded length",
            f"add values: [...], a bounded pattern, or max_length: N (at most {MAX_KEPT_LENGTH})",
        )
    yield from _output_name_problems(file, at, name, scanner, vocabulary)


def _output_name_problems(
    file: str, at: int, name: str, scanner: LeakScanner, vocabulary: _Vocabulary
) -> Iterator[RuleProblem]:
    """An output name the leak scan would block: which token, and which vocabulary entry says so."""
    token = scanner.forbidden_key_token(name)
    if token is not None:
        yield RuleProblem(
            file,
            at,
            f"output field name '{name}' contains the token '{token}', listed in forbidden_key_tokens "
            f"({vocabulary.where('forbidden_key_tokens', token)})",
            f"choose a neutral output name; or, if '{token}' names no content for any partner, remove it "
            f"from forbidden_key_tokens in {vocabulary.path} (a vocabulary change is a ruleset change: "
            "review it with `rules diff`)",
        )
        return
    finding = scanner.key_finding(name)
    if finding is None:
        return
    key = _VOCABULARY_KEY_OF_FINDING.get(finding)
    source = f"{key} ({vocabulary.where(key.split(' ')[0])})" if key else "the leak scan's built-in checks"
    yield RuleProblem(
        file,
        at,
        f"output field name '{name}' looks like forbidden content ({finding}, from {source})",
        "choose a neutral output name: partners never receive keys that look like content or identifiers",
    )


def load_ruleset(
    rules_dir: Path | str,
    event_schema: dict[str, Any] | None = None,
    *,
    reserved_topics: Mapping[str, str] | None = None,
) -> Ruleset:
    """Load, validate, check and compile every rule in `rules_dir` (rule order = file name order).

    `event_schema` (parsed JSON) is the schema whose privacy tags the rules are checked
    against and the digest covers: the shipped one by default; replay passes the schema a
    past commit held beside its rules. `reserved_topics` maps the topics the guard itself
    reads or writes (inputs, state, the blocked topic), as configured, to what each one is;
    a rule writing to one is refused.
    """
    tags = privacy_tags_of(event_schema) if event_schema is not None else privacy_tags()
    directory = Path(rules_dir)
    problems: list[RuleProblem] = []
    if not directory.is_dir():
        raise RulesetError(
            [
                RuleProblem(
                    str(directory),
                    1,
                    "rules directory not found",
                    "pass an existing directory with --rules",
                )
            ]
        )
    leak_path = directory / LEAK_SCAN_FILE
    leak_scan: LeakScanFile | None = None
    leak_doc: Any = None
    if not leak_path.is_file():
        problems.append(
            RuleProblem(
                str(leak_path),
                1,
                "leak-scan vocabulary missing",
                "create it (see rules/_leak-scan.yaml in the repository)",
            )
        )
    else:
        leak_doc = _read_yaml(leak_path, problems)
        if leak_doc is not None:
            leak_scan = _validate(LeakScanFile, leak_path, leak_doc, problems)
        if leak_scan is not None:
            for index, pattern in enumerate(leak_scan.title_id_patterns):
                try:
                    compile_linear(pattern)
                except LinearRegexError as exc:
                    problems.append(
                        RuleProblem(
                            str(leak_path),
                            _line_of(leak_doc, ("title_id_patterns", index)),
                            f"title id pattern {pattern!r} cannot run in linear time (RE2: {exc})",
                            "correct the pattern; RE2 has no backreferences or lookaround",
                        )
                    )
                    leak_scan = None
    scanner = LeakScanner.from_config(leak_scan or LeakScanFile())  # for output names
    vocabulary = _Vocabulary(str(leak_path), leak_doc)

    rules: list[RuleFile] = []
    loaded: list[_Loaded] = []
    seen: dict[str, str] = {}
    files = sorted(
        p for p in directory.glob("*.y*ml") if p.name != LEAK_SCAN_FILE and p.suffix in (".yaml", ".yml")
    )
    for path in files:
        doc = _read_yaml(path, problems)
        if doc is None:
            continue
        rule = _validate(RuleFile, path, doc, problems)
        if rule is None:
            continue
        problems.extend(_check_rule(rule, path, doc, scanner, tags, vocabulary, reserved_topics or {}))
        if rule.partner in seen:
            problems.append(
                RuleProblem(
                    str(path),
                    _line_of(doc, ("partner",)),
                    f"partner '{rule.partner}' is also defined in {seen[rule.partner]}",
                    "one file per partner",
                )
            )
        seen[rule.partner] = str(path)
        rules.append(rule)
        loaded.append(_Loaded(rule, path, doc))
    problems.extend(_topic_problems(loaded))
    if not files:
        problems.append(RuleProblem(str(directory), 1, "no partner rules found", "add <partner>.yaml files"))
    if problems or leak_scan is None:
        raise RulesetError(problems)
    frozen_rules = tuple(rules)
    return Ruleset(
        rules=tuple(compile_rule(r) for r in frozen_rules),
        leak_scanner=scanner_for(leak_scan, frozen_rules),
        digest=ruleset_digest(frozen_rules, leak_scan, tags.tags),
        vocabulary=leak_scan,
        tags=tags.tags,
        event_schema=event_schema,
    )
