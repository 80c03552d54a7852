"""Poll scheduling: sparse early, dense around the expected end, never outside [1 s, poll interval]."""

from __future__ import annotations

import pytest

from wanx_mcp.schedule import MIN_INTERVAL, Estimate, next_poll_delay


def test_estimate_learns_from_history_and_falls_back_to_the_catalog() -> None:
    assert Estimate.from_history([], fallback=60).seconds == 60
    few = [100, 104, 96, 100, 102]
    learned = Estimate.from_history(few, fallback=60)
    assert learned.seconds == 100 and 5 < learned.spread < 20  # five samples narrow the assumed 20 % spread
    settled = Estimate.from_history(few * 20, fallback=60)  # a hundred: their own 2.9 s, but never below 5 %
    assert settled.seconds == 100 and settled.spread == 5


@pytest.mark.parametrize("poll_interval", [2.0, 15.0, 60.0])
def test_delays_stay_between_one_second_and_the_poll_interval(poll_interval: float) -> None:
    estimate = Estimate.from_history([], fallback=210)
    for tenth in range(0, 6000):
        delay = next_poll_delay(tenth / 10, estimate, poll_interval)
        assert MIN_INTERVAL <= delay <= poll_interval


def test_sparse_early_dense_near_the_end_backing_off_when_overdue() -> None:
    estimate = Estimate(seconds=200, spread=20)
    start, end = estimate.window
    early = next_poll_delay(0, estimate, 15)
    near_end = next_poll_delay(end - 2, estimate, 15)
    overdue = [next_poll_delay(end + minutes * 60, estimate, 15) for minutes in (1, 2, 4)]
    assert early == 15  # long before the window: one check per poll interval
    assert near_end < next_poll_delay(start + 5, estimate, 15) <= 15
    assert near_end <= 2
    assert overdue == sorted(overdue) and overdue[-1] == 15


def test_checks_walk_through_the_window_without_skipping_it() -> None:
    estimate = Estimate(seconds=60, spread=8)
    start, end = estimate.window
    moments, elapsed = [], 0.0
    while elapsed < end + 30:
        elapsed += next_poll_delay(elapsed, estimate, 15)
        moments.append(elapsed)
    inside = [m for m in moments if start <= m <= end]
    assert len(inside) >= 4  # the likely end is sampled densely
    assert len([m for m in moments if m < start]) <= 4  # and little is spent before it
