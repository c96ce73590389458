"""The house's import rules, read from the code (docs/architecture.md draws the same map).

Each room of `streams/` may import only the rooms below it in `MAY_IMPORT`; the core imports
only itself; the auditors and the offline tools never import the pipeline (they read what it
wrote through `runtime/formats`); an engine reaches the pipeline only through its one shared
seam, `runtime/pipeline/decider.py`; and no two modules import each other, directly or round
a longer circle. Lazy imports inside functions count like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

STREAMS = Path(__file__).resolve().parents[1] / "streams"

# room -> the rooms it may import (besides itself). `exitcodes` and `cli_support` are leaves
# every shell room may use; `cli` and `__main__` sit on top and may import anything.
SHELL_LEAVES = {"exitcodes", "streams"}
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "runtime.config": {"core"},
    "runtime.kafka": {"core", "runtime.config"},
    "runtime.formats": {"core", "runtime.kafka"},
    "runtime.ops": {"core", "runtime.config", "runtime.kafka", "runtime.formats"},
    "runtime.state": {"core", "runtime.config", "runtime.kafka", "runtime.ops"},
    "runtime.pipeline": {
        "core",
        "runtime.config",
        "runtime.kafka",
        "runtime.formats",
        "runtime.ops",
        "runtime.state",
    },
    "runtime.workers": {
        "core",
        "runtime.config",
        "runtime.kafka",
        "runtime.formats",
        "runtime.ops",
        "broker",
    },
    "engines": {
        "core",
        "runtime.config",
        "runtime.kafka",
        "runtime.formats",
        "runtime.ops",
        "runtime.state",
        "runtime.pipeline",
    },
    "audit": {
        "core",
        "runtime.config",
        "runtime.kafka",
        "runtime.formats",
        "runtime.ops",
        "runtime.state",
        "cli_support",
    },
    "offline": {"core", "cli_support"},
    "broker": set(),
    "gen": {"core"},
    "harness": {"broker", "gen", "runtime.kafka"},
    "demo": {"core", "broker", "gen", "harness", "runtime.kafka", "runtime.formats"},
    "cli_support": {"core"},
    # the settings model as the flags of `run` and `check-config`, and as docs/settings.md
    "cli_settings": {"core", "runtime.config"},
    # the operator's kcat: `produce` and `tail`, with the job's settings and record formats
    "tools": {"core", "runtime.config", "runtime.kafka", "runtime.formats", "runtime.ops"},
    "exitcodes": set(),
    "runtime": set(),
}
# The one module of the pipeline an engine may import: the decision path every engine shares.
ENGINE_SEAM = "streams.runtime.pipeline.decider"


def _module_of(path: Path) -> str:
    parts = path.relative_to(STREAMS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """`streams.runtime.state.store` -> `runtime.state`; `streams.core.rules.x` -> `core`."""
    parts = module.split(".")[1:]
    if not parts:
        return "streams"
    if parts[0] == "runtime" and len(parts) > 1:
        return f"runtime.{parts[1]}"
    return parts[0]


def _modules() -> dict[str, Path]:
    return {_module_of(path): path for path in STREAMS.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) for every `streams` module `path` imports, at any depth of the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("streams"):
                    yield node.lineno, alias.name
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("streams")
        ):
            module = str(node.module)
            for alias in node.names:
                name = f"{module}.{alias.name}"
                yield node.lineno, name if name in known else module


def test_every_room_imports_only_the_rooms_below_it() -> None:
    modules = _modules()
    known = set(modules)
    found = []
    for module, path in sorted(modules.items()):
        room = room_of(module)
        if room in {"cli", "__main__", "streams"}:
            continue
        assert room in MAY_IMPORT, f"{path}: room {room!r} has no import rule; add it to MAY_IMPORT"
        for line, target in imports_of(path, known):
            other = room_of(target)
            if other == room or (other in SHELL_LEAVES and room != "core"):
                continue
            if other not in MAY_IMPORT[room]:
                found.append(f"{path.relative_to(STREAMS.parent)}:{line}: {room} imports {target}")
    assert found == []


def pipeline_imports_from(rooms: set[str]) -> list[str]:
    """`file:line: module` for every import of the pipeline made from one of `rooms`."""
    modules = _modules()
    return [
        f"{path.name}:{line}: {target}"
        for module, path in modules.items()
        if room_of(module) in rooms
        for line, target in imports_of(path, set(modules))
        if room_of(target) == "runtime.pipeline"
    ]


def test_engines_reach_the_pipeline_only_through_the_decider_seam() -> None:
    assert [found for found in pipeline_imports_from({"engines"}) if not found.endswith(ENGINE_SEAM)] == []


def test_auditors_and_offline_tools_never_import_the_pipeline() -> None:
    assert pipeline_imports_from({"audit", "offline"}) == []


def test_no_import_circles_between_modules() -> None:
    modules = _modules()
    graph = {
        m: {t for _, t in imports_of(p, set(modules)) if t in modules and t != m} for m, p in modules.items()
    }
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_rules_see_a_violation() -> None:
    """The checker itself: a made-up audit module importing the job loop is caught."""
    assert room_of("streams.runtime.pipeline.job") == "runtime.pipeline"
    assert "runtime.pipeline" not in MAY_IMPORT["audit"]
    assert room_of("streams.core.rules.loader") == "core"
