"""`partner-guard run --workers 2`: two processes in one group, one metrics endpoint, exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker
from tests.integration.engine_scenarios import INPUT, outcomes, prepare, wait_consumed
from tests.integration.kafka_helpers import PARTNERS, produce, start_guard

pytestmark = pytest.mark.integration


def test_two_workers_share_the_input_and_one_endpoint_reports_both(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    generator = prepare(broker, population=500, seed=23)
    events = list(generator.events(4000))
    guard = start_guard(
        broker.bootstrap,
        tmp_path,
        INPUT,
        "workers",
        transactional_id="guard-workers",
        extra_env={"PARTNER_GUARD_WORKERS": "2"},
    )
    try:
        guard.wait_ready(timeout_s=120)
        produce(broker.bootstrap, INPUT, events)
        wait_consumed(guard, len(events))
        assert all(guard.metric_value("partner_guard_ready", worker=str(i)) == 1 for i in range(2))
        assert guard.metric_value("partner_guard_records_in_total") == len(events)  # summed over workers
        seen_by_partner = outcomes(broker, events)
        for partner in PARTNERS:  # every input exactly once per partner, across the two workers
            assert sum(seen_by_partner[partner].values()) == len(events), partner
            assert max(seen_by_partner[partner].values()) == 1, partner
        assert guard.status("/healthz") == 200
    finally:
        assert guard.stop(timeout_s=60) == 0
