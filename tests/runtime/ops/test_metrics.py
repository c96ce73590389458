"""Metrics added per batch count exactly what adding them one input at a time counts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.runtime.ops.metrics import END_TO_END_BUCKETS, GuardMetrics, observe_all
from streams.runtime.pipeline.decider import BatchTally

_SUM = re.compile(rb"^(\w+_sum) (\S+)$", re.MULTILINE)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([0.0, *END_TO_END_BUCKETS]),  # exactly on a bound: that bucket
            st.floats(min_value=0, max_value=100, allow_nan=False),
            st.just(float("inf")),
            st.just(float("nan")),  # in no bucket, as observe() does
        ),
        max_size=60,
    ),
    st.lists(st.floats(min_value=0, max_value=100), max_size=3),
)
def test_observe_all_exposes_what_observing_one_by_one_exposes(
    amounts: list[float], earlier: list[float]
) -> None:
    registries = CollectorRegistry(), CollectorRegistry()
    one_by_one, bulk = (
        Histogram("latency_seconds", "x", buckets=END_TO_END_BUCKETS, registry=r) for r in registries
    )
    for histogram in (one_by_one, bulk):
        for amount in earlier:
            histogram.observe(amount)
    for amount in amounts:
        one_by_one.observe(amount)
    observe_all(bulk, amounts)
    texts = [generate_latest(r).decode() for r in registries]
    sums = [float(_SUM.search(t.encode()).group(2)) for t in texts]  # type: ignore[union-attr]
    stripped = [
        "\n".join(line for line in t.splitlines() if "_sum" not in line and "_created" not in line)
        for t in texts
    ]
    assert stripped[0] == stripped[1]
    assert sums[1] == pytest.approx(sums[0], rel=1e-12, nan_ok=True)


def test_observe_all_refuses_a_labelled_parent_as_observe_does() -> None:
    histogram = Histogram("h", "x", ["partner"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        observe_all(histogram, [0.1])
    observe_all(histogram, [])  # nothing to observe: nothing to refuse


def test_a_batch_observes_the_end_to_end_latency_of_each_of_its_inputs() -> None:
    metrics, tally = GuardMetrics(), BatchTally()
    far_future, long_ago = 10**15, 1_000  # latency 0 (never negative), and past the last bound
    tally.timestamps_ms = [far_future, far_future, long_ago]
    tally.apply(metrics, 0.02)
    registry = metrics.registry
    name = "partner_guard_end_to_end_latency_seconds"
    assert registry.get_sample_value(f"{name}_count") == 3
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.01"}) == 2
    assert registry.get_sample_value(f"{name}_bucket", {"le": "30.0"}) == 2
    assert registry.get_sample_value(f"{name}_bucket", {"le": "+Inf"}) == 3
    assert registry.get_sample_value("partner_guard_batch_duration_seconds_count") == 1
