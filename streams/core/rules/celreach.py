"""What a CEL condition can read: a strict parser for the CEL subset rules may use.

The CEL binding (`common-expression-language`, module `cel`) compiles and runs conditions
but exposes no syntax tree: `Program.variables()` names `event`, not which of its fields an
expression touches. So conditions are parsed a second time here, by a small recursive
descent parser for a deliberately small subset of CEL, and anything outside the subset is
refused rather than guessed at. From the tree, `reach()` resolves every event field the
condition can read, as a dotted path:

- `event.a.b` and `event["a"]["b"]` read the value at `a.b`;
- `has(event.a.b)` reads only whether `a.b` is present;
- a bare `event`, or an index whose key is computed (`event.properties[x]`), cannot be
  resolved to fields and is refused.

Cost is bounded by construction: the expression is at most `MAX_EXPRESSION_CHARS` long,
`MAX_DEPTH` deep and `MAX_NODES` terms; the only iteration (the macros `all`, `exists`,
`exists_one`, `map`, `filter`) runs over a list literal written in the rule (at most
`MAX_LITERAL_LIST` items, never nested), never over a list the event supplies; event fields
are read at most `MAX_EVENT_READS` times, a macro's body counting once per item; and no
operator builds values larger than its operands (`+` is refused). Every operation left
(comparison, `in`, `contains`, `startsWith`, `endsWith`, `size`, conversions) is linear in
its operands, so a condition costs at most O(MAX_EVENT_READS x event size).

The subset (anything else is refused): literals (`true`, `false`, `null`, integers,
decimals, single- or double-quoted strings with `\\\\ \\' \\" \\n \\t \\r` escapes); list
literals; `! - * / % < <= > >= == != in && || ?:`; field selection and indexing; the
functions `has size int double string` and the methods `contains startsWith endsWith size`
plus the macros above. Map literals, message construction, bytes, raw and triple-quoted
strings, `matches` and timestamp functions are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from streams.core.errors import PartnerGuardError

MAX_EXPRESSION_CHARS = 2_000
MAX_DEPTH = 32  # nesting of brackets, calls and unary operators; CEL evaluates recursively
MAX_NODES = 256  # operators, selections, calls and literals in one condition
MAX_LITERAL_LIST = 64  # items a macro may iterate over
# Each read of an event field costs the CEL binding about a copy of the value (measured
# ~0.5-1 ms per read of a 1 MB value), so reads are counted, a macro's body once per item.
MAX_EVENT_READS = 32

ROOT_VARIABLES = frozenset({"event", "consent", "status"})
CONSENT_FIELDS = frozenset({"jurisdiction", "gdpr_applies", "limit_ad_tracking"})
FUNCTIONS = {"size": 1, "int": 1, "double": 1, "string": 1}
METHODS = {"contains": 1, "startsWith": 1, "endsWith": 1, "size": 0}
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_RESERVED = frozenset(
    {"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop"}
    | {"package", "namespace", "return", "var", "void", "while", "in", "true", "false", "null"}
)

_TOKEN = re.compile(
    r"""(?P<space>\s+|//[^\n]*)
      |(?P<number>\d+\.\d+(?:[eE][+-]?\d+)?|\d+)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<op>\|\||&&|==|!=|<=|>=|[<>!+\-*/%?:.,()\[\]])""",
    re.VERBOSE,
)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_BINARY_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"||"}),
    frozenset({"&&"}),
    frozenset({"==", "!=", "<", "<=", ">", ">=", "in"}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
)


class CelSubsetError(PartnerGuardError, ValueError):
    """The expression is outside the CEL subset rules may use, or reads what it may not."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Lit:
    """A literal value."""

    value: Any


@dataclass(frozen=True, slots=True)
class Ident:
    """A variable: `event`, `consent`, `status` or a macro's iteration variable."""

    name: str


@dataclass(frozen=True, slots=True)
class Select:
    """`operand.name`."""

    operand: Node
    name: str


@dataclass(frozen=True, slots=True)
class Index:
    """`operand[key]`."""

    operand: Node
    key: Node


@dataclass(frozen=True, slots=True)
class Call:
    """A function (`target` None), a method or a macro call."""

    target: Node | None
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ListLit:
    """`[a, b, ...]`."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Op:
    """A unary, binary or conditional (`?:`) operator."""

    op: str
    operands: tuple[Node, ...]


Node = Lit | Ident | Select | Index | Call | ListLit | Op


def _tokens(expression: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise CelSubsetError(
                f"condition is not valid CEL here: unsupported character {expression[position]!r} "
                f"at column {position + 1}",
                "use only the CEL subset listed in docs/rules.md, 'Conditions'",
            )
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        position = match.end()
    return out


def _unquote(literal: str) -> str:
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise CelSubsetError(
                    f"condition is not valid CEL here: unsupported escape \\{escaped} in a string",
                    "use only \\\\ \\' \\\" \\n \\t \\r",
                )
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, expression: str) -> None:
        self.tokens = _tokens(expression)
        self.position = 0
        self.depth = 0
        self.nodes = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise CelSubsetError(
                "condition is not valid CEL here: unexpected end of expression", "complete the expression"
            )
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise CelSubsetError(
                f"condition is not valid CEL here: expected {expected!r}, found {token[1]!r}",
                "correct the CEL syntax",
            )
        self.position += 1
        return token

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CelSubsetError(
                f"condition nests deeper than {MAX_DEPTH} levels", "split it or simplify the expression"
            )

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise CelSubsetError(
                f"condition has more than {MAX_NODES} terms", "simplify it (a list with `in` replaces ORs)"
            )

    def parse(self) -> Node:
        node = self.expression()
        if self.position != len(self.tokens):
            raise CelSubsetError(
                f"condition is not valid CEL here: unexpected {self.tokens[self.position][1]!r}",
                "correct the CEL syntax",
            )
        return node

    def expression(self) -> Node:
        self._enter()
        node = self._binary(0)
        if self._peek() == "?":
            self._take()
            then = self.expression()
            self._take(":")
            node = Op("?:", (node, then, self.expression()))
        self.depth -= 1
        return node

    def _binary(self, level: int) -> Node:
        if level == len(_BINARY_LEVELS):
            return self._unary()
        node = self._binary(level + 1)
        while self._peek() in _BINARY_LEVELS[level]:
            op = self._take()[1]
            self._count()
            node = Op(op, (node, self._binary(level + 1)))
        return node

    def _unary(self) -> Node:
        if self._peek() in ("!", "-"):
            op = self._take()[1]
            self._enter()
            self._count()
            node = Op(op, (self._unary(),))
            self.depth -= 1
            return node
        return self._member()

    def _member(self) -> Node:
        node = self._primary()
        while self._peek() in (".", "["):
            self._count()
            if self._take()[1] == ".":
                kind, name = self._take()
                if kind != "ident" or name in _RESERVED:
                    raise CelSubsetError(
                        f"condition is not valid CEL here: '.{name}' is not a field name",
                        "correct the CEL syntax",
                    )
                node = Call(node, name, self._arguments()) if self._peek() == "(" else Select(node, name)
            else:
                key = self.expression()
                self._take("]")
                node = Index(node, key)
        return node

    def _arguments(self, close: str = ")") -> tuple[Node, ...]:
        self._take()
        args: list[Node] = []
        while self._peek() != close:
            args.append(self.expression())
            if self._peek() != close:
                self._take(",")
        self._take(close)
        return tuple(args)

    def _primary(self) -> Node:
        self._count()
        kind, text = self._take()
        if kind == "number":
            return Lit(float(text) if "." in text else int(text))
        if kind == "string":
            return Lit(_unquote(text))
        if text in ("true", "false", "null"):
            return Lit({"true": True, "false": False, "null": None}[text])
        if kind == "ident":
            if text in _RESERVED:
                raise CelSubsetError(
                    f"condition is not valid CEL here: '{text}' is reserved", "correct the CEL syntax"
                )
            if self._peek() == "(":
                return Call(None, text, self._arguments())
            return Ident(text)
        if text == "(":
            self._enter()
            node = self.expression()
            self._take(")")
            self.depth -= 1
            return node
        if text == "[":
            self.position -= 1
            return ListLit(self._arguments("]"))
        raise CelSubsetError(
            f"condition is not valid CEL here: unexpected {text!r}", "correct the CEL syntax"
        )


def parse(expression: str) -> Node:
    """Parse a condition into its syntax tree; raises `CelSubsetError` outside the subset."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CelSubsetError(
            f"condition is {len(expression)} characters long, over {MAX_EXPRESSION_CHARS}",
            "simplify the condition",
        )
    return _Parser(expression).parse()


@dataclass(frozen=True, slots=True)
class Reach:
    """The event fields a condition can read: their values, or only their presence."""

    values: frozenset[tuple[str, ...]] = frozenset()
    presence: frozenset[tuple[str, ...]] = frozenset()
    iteration_variables: frozenset[str] = frozenset()

    def include(self) -> dict[str, Any]:
        """A pydantic `include` that dumps exactly these fields (presence-only records as `{}`)."""
        tree: dict[str, Any] = {}
        for path in sorted(self.presence | self.values, key=len):
            node = tree
            for part in path[:-1]:
                child = node.setdefault(part, {})
                if child is True:
                    break
                node = child
            else:
                if path in self.values:
                    node[path[-1]] = True
                else:
                    node.setdefault(path[-1], {})
        return tree


@dataclass
class _Walk:
    values: set[tuple[str, ...]] = field(default_factory=set)
    presence: set[tuple[str, ...]] = field(default_factory=set)
    bound: set[str] = field(default_factory=set)
    in_macro: bool = False
    declared: set[str] = field(default_factory=set)
    reads: list[int] = field(default_factory=lambda: [0])  # shared with nested walks
    weight: int = 1  # how often this part runs: a macro's body runs once per list item

    def read(self) -> None:
        self.reads[0] += self.weight
        if self.reads[0] > MAX_EVENT_READS:
            raise CelSubsetError(
                f"condition reads event fields more than {MAX_EVENT_READS} times "
                "(a macro's body counts once per list item)",
                "read each field once; test membership with `event.a in [...]`",
            )


def _event_path(node: Node) -> tuple[str, ...] | None:
    """The static path of a selection chain rooted at `event`; None when not rooted there."""
    parts: list[str] = []
    while True:
        if isinstance(node, Select):
            parts.append(node.name)
            node = node.operand
        elif isinstance(node, Index):
            if not (isinstance(node.key, Lit) and isinstance(node.key.value, str)):
                root: Node = node
                while isinstance(root, Select | Index):
                    root = root.operand
                if isinstance(root, Ident) and root.name == "event":
                    raise CelSubsetError(
                        "condition indexes the event with a computed key: what it reads cannot be resolved",
                        'use a field path or a string literal key (event.properties["step"])',
                    )
                return None
            parts.append(node.key.value)
            node = node.operand
        elif isinstance(node, Ident) and node.name == "event":
            return tuple(reversed(parts))
        else:
            return None


def _visit(node: Node, walk: _Walk) -> None:
    path = _event_path(node)
    if path is not None:
        if not path:
            raise CelSubsetError(
                "condition reads the whole event, which reaches every field",
                "read only the fields the condition needs (event.device.platform)",
            )
        walk.values.add(path)
        walk.read()
        return
    if isinstance(node, Lit):
        return
    if isinstance(node, Ident):
        if node.name not in ROOT_VARIABLES | walk.bound:
            raise CelSubsetError(
                f"condition uses unknown variables ['{node.name}']", "use only event, consent and status"
            )
        return
    if isinstance(node, Select):
        consent_field = isinstance(node.operand, Ident) and node.operand.name == "consent"
        if consent_field and node.name not in CONSENT_FIELDS:
            raise CelSubsetError(
                f"condition reads consent.{node.name}, which does not exist",
                f"use one of {sorted(CONSENT_FIELDS)}",
            )
        _visit(node.operand, walk)
        return
    if isinstance(node, Index):
        _visit(node.operand, walk)
        _visit(node.key, walk)
        return
    if isinstance(node, Op) and node.op == "+" and len(node.operands) == 2:
        raise CelSubsetError(
            "condition uses `+`, which builds new strings and lists from event data",
            "compare values instead of concatenating them",
        )
    if isinstance(node, ListLit | Op):
        for child in node.items if isinstance(node, ListLit) else node.operands:
            _visit(child, walk)
        return
    _visit_call(node, walk)


def _visit_call(node: Call, walk: _Walk) -> None:
    if node.target is None and node.name == "has":
        if len(node.args) != 1 or not isinstance(node.args[0], Select):
            raise CelSubsetError(
                "condition is not valid CEL here: has() takes one field selection", "write has(event.a.b)"
            )
        path = _event_path(node.args[0])
        if path is None:
            _visit(node.args[0], walk)
        else:
            walk.presence.add(path)
            walk.read()
        return
    if node.target is not None and node.name in MACROS:
        _visit_macro(node, node.target, walk)
        return
    arity = (METHODS if node.target is not None else FUNCTIONS).get(node.name)
    if arity is None:
        allowed = sorted(METHODS) if node.target is not None else ["has", *sorted(FUNCTIONS)]
        raise CelSubsetError(
            f"condition calls '{node.name}', which rules may not use", f"use only {', '.join(allowed)}"
        )
    if len(node.args) != arity:
        raise CelSubsetError(
            f"condition is not valid CEL here: {node.name}() takes {arity} argument(s)", "correct the call"
        )
    if node.target is not None:
        _visit(node.target, walk)
    for arg in node.args:
        _visit(arg, walk)


def _visit_macro(node: Call, target: Node, walk: _Walk) -> None:
    if not isinstance(target, ListLit):
        raise CelSubsetError(
            f"condition iterates ({node.name}) over something other than a list written in the rule",
            "iterate only over a list literal; never over event data",
        )
    if len(target.items) > MAX_LITERAL_LIST:
        raise CelSubsetError(
            f"condition iterates over {len(target.items)} items, over {MAX_LITERAL_LIST}",
            "shorten the list",
        )
    if walk.in_macro:
        raise CelSubsetError("condition nests one iteration in another", "flatten the condition")
    expected = (2, 3) if node.name == "map" else (2,)
    variable = node.args[0] if node.args else None
    if len(node.args) not in expected or not isinstance(variable, Ident):
        raise CelSubsetError(
            f"condition is not valid CEL here: {node.name}() takes a variable and a predicate",
            "write list.exists(x, p)",
        )
    if variable.name in ROOT_VARIABLES or variable.name in _RESERVED:
        raise CelSubsetError(
            f"condition is not valid CEL here: '{variable.name}' cannot name an iteration variable",
            "rename it",
        )
    for item in target.items:
        _visit(item, walk)
    walk.declared.add(variable.name)
    inner = _Walk(
        walk.values,
        walk.presence,
        walk.bound | {variable.name},
        True,
        walk.declared,
        walk.reads,
        len(target.items),
    )
    for arg in node.args[1:]:
        _visit(arg, inner)


def reach(expression: str) -> Reach:
    """Every event field the condition can read; raises `CelSubsetError` when unresolvable."""
    walk = _Walk()
    _visit(parse(expression), walk)
    return Reach(frozenset(walk.values), frozenset(walk.presence), frozenset(walk.declared))
