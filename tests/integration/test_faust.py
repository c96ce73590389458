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


def test_faust_read_your_revocation_100_times(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    test_job.test_read_your_revocation_100_times(broker, tmp_path)


def test_faust_poison_records_are_blocked_and_the_worker_keeps_running(
    faust_engine: None, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    test_job.test_poison_records_are_blocked_and_the_job_keeps_running(broker, tmp_path)


def test_faust_sigkill_mid_stream_loses_nothing(faust_engine: None, broker: EmbeddedBroker, tmp_path: Path) -> None:
    test_job.test_sigkill_mid_stream_loses_nothing(broker, tmp_path)


def test_faust_sigterm_exits_cleanly(faust_engine: None, broker: EmbeddedBroker, tmp_path: Path) -> None:
    test_job.test_sigterm_exits_cleanly_and_leaves_no_open_transaction(broker, tmp_path)
