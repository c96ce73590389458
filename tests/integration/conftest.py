"""Integration fixtures: the embedded broker on a free loopback port, its log on failure.

Under xdist (`make test`) each worker is its own process with its own session broker on its
own free port; every other broker is started per test, and a fault test only ever kills,
pauses or cuts off its own processes. Which tests share a worker: tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the broker log to a failed test's report."""
    report = yield
    if report.failed:
        for name in ("broker", "session_broker"):
            broker = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(broker, EmbeddedBroker) and broker.log_path and broker.log_path.exists():
                tail = broker.log_path.read_text(errors="replace")[-3000:]
                report.sections.append(("embedded broker log (tail)", tail))
    return report


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One broker for the whole test session (tests must use their own topic names)."""
    log = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker.start(log_path=log) as broker:
        yield broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A fresh broker for tests that need the fixed partner and blocked topic names to themselves."""
    with EmbeddedBroker.start(log_path=tmp_path / "tansu.log") as fresh:
        yield fresh
