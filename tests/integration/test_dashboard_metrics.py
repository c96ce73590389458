"""Every metric the Grafana dashboard queries is one a real guard run exports."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from tests.integration.kafka_helpers import produce, seed_population, start_guard
from tests.test_deploy import dashboard_metrics

pytestmark = pytest.mark.integration


def _exported(metrics: str) -> set[str]:
    """The metric names in a /metrics text (histogram and counter suffixes folded in)."""
    return {
        re.sub(r"_(bucket|sum|count|created)$", "", line.split("{")[0].split(" ")[0])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }


def test_dashboard_queries_only_exported_metrics(session_broker: EmbeddedBroker, tmp_path: Path) -> None:
    broker = session_broker  # only metric names are checked, so the shared broker will do
    generator = seed_population(broker.bootstrap, "internal.events", 300, 2)
    guard = start_guard(
        broker.bootstrap, tmp_path, "internal.events", "dash", transactional_id="guard-dash-0"
    )
    try:
        guard.wait_ready()
        leak = {
            "event_id": "e-leak",
            "event_type": "app_open",
            "event_time": 1,
            "account_id": "acct-0000002",  # in the US, as its stored jurisdiction says too
            "device": {"platform": "ios"},
            "context": {"country": "US"},
            "properties": {"campaign_id": "title-801001"},  # passes the rule pattern, caught by the scan
        }
        produce(
            broker.bootstrap,
            "internal.events",
            [*generator.events(2000), KeyedRecord(b"k", orjson.dumps(leak))],
        )
        deadline = time.monotonic() + 120
        while guard.metric_value("partner_guard_records_in_total") < 2001 and time.monotonic() < deadline:
            time.sleep(0.25)
        deadline = time.monotonic() + 60  # the lag gauges appear at their first refresh (every 5 s)
        while (missing := dashboard_metrics() - _exported(guard.metrics())) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not missing, missing
    finally:
        assert guard.stop() == 0
