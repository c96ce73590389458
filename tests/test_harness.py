"""The harness reads a guard's /metrics the way an operator's scraper would."""

from __future__ import annotations

from streams.harness import histogram_buckets, metric_sum

METRICS = """\
# HELP partner_guard_decisions_total Decisions per partner and verdict
partner_guard_decisions_total{partner="a",verdict="forward"} 3.0
partner_guard_decisions_total{partner="a",verdict="block"} 5.0
partner_guard_decisions_total{partner="b",verdict="block"} 7.0
partner_guard_decisions_total_created{partner="a",verdict="forward"} 1.7e9
partner_guard_ready 1.0
partner_guard_latency_seconds_bucket{le="0.1"} 4.0
partner_guard_latency_seconds_bucket{le="1.0"} 9.0
partner_guard_latency_seconds_bucket{le="+Inf"} 10.0
"""


def test_metric_sum_adds_the_samples_whose_labels_match() -> None:
    assert metric_sum(METRICS, "partner_guard_decisions_total") == 15.0  # not the _created series
    assert metric_sum(METRICS, "partner_guard_decisions_total", verdict="block") == 12.0
    assert metric_sum(METRICS, "partner_guard_decisions_total", partner="a", verdict="block") == 5.0
    assert metric_sum(METRICS, "partner_guard_ready") == 1.0
    assert metric_sum(METRICS, "partner_guard_missing") == 0.0


def test_histogram_buckets_by_upper_bound() -> None:
    buckets = histogram_buckets(METRICS, "partner_guard_latency_seconds")
    assert buckets == {0.1: 4.0, 1.0: 9.0, float("inf"): 10.0}
