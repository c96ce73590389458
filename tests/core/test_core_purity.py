"""What the README says of the core holds: it imports only itself and libraries, and nothing
that reads a clock, draws randomness, touches the network or the environment, or writes."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "streams" / "core"
# Modules whose import alone would let the core read time, randomness, the network or the
# environment, or start processes and threads.
IMPURE_MODULES = {
    "time",
    "random",
    "secrets",
    "os",
    "socket",
    "subprocess",
    "threading",
    "asyncio",
    "urllib.request",
    "http",
    "confluent_kafka",
    "logging",
}
# Calls that read a clock or draw randomness even from an allowed module.
IMPURE_CALLS = {"now", "utcnow", "today", "uuid1", "uuid4", "urandom", "getenv"}


def _core_sources() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_imports_only_itself_and_nothing_impure() -> None:
    found = []
    for path in _core_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "streams" and not name.startswith("streams.core"):
                    found.append(f"{path.name}: imports the shell ({name})")
                if name in IMPURE_MODULES or name.split(".")[0] in IMPURE_MODULES:
                    found.append(f"{path.name}: imports {name}")
    assert found == []


def test_the_core_calls_no_clock_and_draws_no_randomness() -> None:
    found = []
    for path in _core_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr in IMPURE_CALLS:
                found.append(f"{path.name}:{called.lineno}: {called.attr}()")
    assert found == []
