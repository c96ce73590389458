"""Bounded YAML loading for rule files: size, nesting depth and alias expansion.

A YAML alias (`*name`) stands for a whole earlier node, so eleven lines of aliases of
aliases expand to billions of nodes ("billion laughs"); everything downstream of the
parser (validation, hashing) walks the expanded tree. Loading therefore goes:

1. the file size is checked (`MAX_FILE_BYTES`) before the text is read;
2. a (flat) event stream is walked for nesting depth, stopping at the first collection
   deeper than `MAX_DEPTH`: ruamel's composer is recursive and its pure-Python scanner
   slows down with every open flow collection (`[[[[...` for a second or more), so depth
   is checked first by libyaml's C parser (PyYAML; a 1 MiB file in about 0.2 s), or by
   ruamel's own event stream when libyaml is missing or reads the file differently; the
   text is then composed into a node graph, where an alias is a reference to its anchor's
   node, so composing is linear in the text;
3. the graph is measured as if every alias were expanded, in linear time (each distinct
   node measured once, iteratively): more than `MAX_NODES` nodes, more than `MAX_DEPTH`
   levels, or an alias that contains itself is refused, naming the line of the first node
   that crosses the bound;
4. only then is the graph constructed into Python objects (merge keys `<<:` work as usual).

`line_of` finds the line of a key or item in a loaded document, for messages about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml as libyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from streams.core.errors import PartnerGuardError

MAX_FILE_BYTES = 256 * 1024  # a rule is a page; ruamel parses ~100-250 KB/s, so this loads in 1-3 s
MAX_DEPTH = 32  # shipped rules nest 5 levels
MAX_NODES = 100_000  # after alias expansion; shipped rules have a few hundred


class YamlBoundError(PartnerGuardError, ValueError):
    """The file exceeds a loading bound; `line` is 1-based."""

    def __init__(self, line: int, message: str, fix: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.fix = fix


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _too_deep(line: int) -> YamlBoundError:
    return YamlBoundError(line, f"YAML nests deeper than {MAX_DEPTH} levels", "flatten the structure")


def _check_nesting_fast(text: str) -> bool:
    """Depth check on libyaml's events; False when it cannot decide (then ruamel's events)."""
    if not libyaml.__with_libyaml__:
        return False
    depth = 0
    try:
        for event in libyaml.parse(text, Loader=libyaml.CSafeLoader):
            if isinstance(event, libyaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(event.start_mark.line + 1 if event.start_mark else 1)
            elif isinstance(event, libyaml.CollectionEndEvent):
                depth -= 1
    except libyaml.MarkedYAMLError as exc:
        if "nesting depth" in str(exc.problem) and exc.problem_mark is not None:
            raise _too_deep(exc.problem_mark.line + 1) from None
        return False  # a syntax libyaml reads differently: ruamel decides
    return True


def _check_nesting(text: str) -> None:
    """Walk the parser's events (no recursion) and refuse the first collection too deep."""
    if _check_nesting_fast(text):
        return
    depth = 0
    for event in YAML(typ="rt").parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(event.start_mark.line + 1)
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def _check_expansion(root: Node) -> None:
    """Count nodes and depth as if aliases were expanded, without expanding them."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        children = _children(node)
        if not children_done:
            if key in open_nodes:
                raise YamlBoundError(
                    node.start_mark.line + 1, "YAML alias refers to itself", "remove the recursive alias"
                )
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in size)
            continue
        open_nodes.discard(key)
        size[key] = 1 + sum(size[id(child)] for child in children)
        depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
        line = node.start_mark.line + 1
        if size[key] > MAX_NODES:
            raise YamlBoundError(
                line,
                f"YAML expands to more than {MAX_NODES} nodes once aliases are resolved",
                "write the content out instead of nesting aliases of aliases",
            )
        if depth[key] > MAX_DEPTH:
            raise YamlBoundError(
                line,
                f"YAML nests deeper than {MAX_DEPTH} levels (aliases expanded)",
                "flatten the structure",
            )


def load_bounded_text(text: str) -> Any:
    """Parse YAML (round-trip, keeping line numbers) within the bounds; raises `YamlBoundError`."""
    if len(text) > MAX_FILE_BYTES:
        raise YamlBoundError(1, f"file is larger than {MAX_FILE_BYTES} bytes", "split or shorten it")
    _check_nesting(text)
    yaml = YAML(typ="rt")
    root = yaml.compose(text)
    if root is None:
        return None
    _check_expansion(root)
    return yaml.constructor.construct_document(root)


def load_bounded(path: Path) -> Any:
    """Read and parse a YAML file within the bounds (size checked before reading)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise YamlBoundError(1, f"file is larger than {MAX_FILE_BYTES} bytes", "split or shorten it")
    return load_bounded_text(path.read_text(encoding="utf-8"))


def line_of(doc: Any, loc: tuple[int | str, ...]) -> int:
    """The 1-based line of the node at `loc` (or of the closest existing parent)."""
    node = doc
    line = 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            if part in node.lc.data:  # keys merged in with `<<:` have no position of their own
                line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            if isinstance(node, CommentedMap | CommentedSeq):
                line = max(line, node.lc.line + 1)
            break
    return line
