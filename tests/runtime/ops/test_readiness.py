"""Readiness: deciding and the broker answering, both; a change of the broker's state is logged once."""

from __future__ import annotations

import logging

import pytest

from streams.runtime.ops.broker_watch import Readiness
from streams.runtime.ops.metrics import GuardMetrics


def _gauge(metrics: GuardMetrics) -> float:
    value = metrics.registry.get_sample_value("partner_guard_ready")
    assert value is not None
    return value


def test_ready_only_while_deciding_and_the_broker_answers(caplog: pytest.LogCaptureFixture) -> None:
    metrics = GuardMetrics()
    readiness = Readiness(metrics.ready)
    assert not readiness.is_ready()
    readiness.set_deciding(True)
    assert readiness.is_ready() and _gauge(metrics) == 1
    with caplog.at_level(logging.INFO, logger="streams.runtime.ops.broker_watch"):
        readiness.set_broker_ok(False)
        readiness.set_broker_ok(False)
        assert not readiness.is_ready() and _gauge(metrics) == 0
        readiness.set_broker_ok(True)
    assert readiness.is_ready() and _gauge(metrics) == 1
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    readiness.set_deciding(False)
    assert not readiness.is_ready() and _gauge(metrics) == 0


def test_one_slow_probe_does_not_flap_readiness_two_in_a_row_do() -> None:
    from streams.runtime.ops.broker_watch import BrokerWatch

    metrics = GuardMetrics()
    readiness = Readiness(metrics.ready)
    readiness.set_deciding(True)
    watch = BrokerWatch({"bootstrap.servers": "127.0.0.1:1"}, readiness)  # never started: fed by hand
    watch.record_probe(False)
    assert readiness.is_ready()
    watch.record_probe(True)
    watch.record_probe(False)
    assert readiness.is_ready()
    watch.record_probe(False)
    assert not readiness.is_ready() and _gauge(metrics) == 0
    watch.record_probe(True)
    assert readiness.is_ready()
