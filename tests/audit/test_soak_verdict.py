"""The soak's long-run checks: a steady leak fails, a one-time backlog bump does not."""

from __future__ import annotations

from benchmarks.soak import Sample, _verdict


def _rows(rss: list[float], lag: list[float] | None = None) -> list[Sample]:
    lag = lag or [0.0] * len(rss)
    return [
        Sample(10.0 * (i + 1), 0, 0.0, mb, 38, 0.5, 0.0, lagged, 0, 50.0, 1.0)
        for i, (mb, lagged) in enumerate(zip(rss, lag, strict=True))
    ]


def test_a_steady_leak_fails() -> None:
    leak = [150 + 0.1 * 10 * i for i in range(72)]  # +360 MB/h for 12 minutes
    assert any("memory grows" in p for p in _verdict(_rows(leak), [], 600))


def test_growth_a_growing_backlog_explains_passes_and_a_leak_beside_it_does_not() -> None:
    lag = [1000.0 * i for i in range(72)]  # +1,000 records a sample: up to ~1 MB prefetched
    prefetch = [150 + 0.9 * i for i in range(72)]
    assert not any("memory grows" in p for p in _verdict(_rows(prefetch, lag), [], 600))
    leak_too = [150 + 2.0 * i for i in range(72)]
    assert any("memory grows" in p for p in _verdict(_rows(leak_too, lag), [], 600))


def test_a_backlog_bump_that_then_stays_flat_passes() -> None:
    warm = [150 + i * 0.2 for i in range(36)]
    bump = [157 + min(i, 6) * 5 for i in range(18)]  # a backlog raises RSS once, then it stays
    flat = [187.0] * 18
    assert _verdict(_rows(warm + bump + flat), [], 600) == []


def test_a_guard_that_keeps_falling_behind_fails() -> None:
    lag = [1000.0 * i * i for i in range(72)]
    problems = _verdict(_rows([150.0] * 72, lag), [], 600)
    assert any("falls behind" in p for p in problems)


def test_p99_drift_is_the_second_half_median_against_the_first_minute() -> None:
    assert _verdict(_rows([150.0] * 72), [0.1, 0.9, 0.1, 0.1, 0.1, 0.15], 600) == []  # one spike
    assert any("p99 drift" in p for p in _verdict(_rows([150.0] * 72), [0.1, 0.1, 0.1, 0.3, 0.3, 0.3], 600))
