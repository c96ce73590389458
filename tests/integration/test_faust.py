"""The Faust engine (`partner-guard run --engine faust`) against the embedded broker.

The confluent-kafka job's own conservation, leak, poison and read-your-revocation tests run
here unchanged, with `start_guard` switched to the Faust engine; plus a parity test (both
engines, same input and state, same output records) and a SIGKILL test (nothing lost,
duplicates counted).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker
from tests.integration import test_job
from tests.integration.kafka_helpers import start_guard

pytestmark = pytest.mark.integration


@pytest.fixture
def faust_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `start_guard` of the reused tests starts the Faust engine."""
    monkeypatch.setattr(test_job, "start_guard", functools.partial(start_guard, engine="faust"))
    yield


def test_faust_conservation_no_leaks_and_metrics_agree(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    test_job.test_conservation_no_leaks_and_metrics_agree(broker, tmp_path)
