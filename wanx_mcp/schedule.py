"""When to ask DashScope about a task next: sparse early, dense around the expected end."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MIN_INTERVAL = 1.0


@dataclass(frozen=True)
class Estimate:
    """Expected generation time of a task and how much it varies, in seconds."""

    seconds: float
    spread: float

    @classmethod
    def from_history(cls, samples: list[float], fallback: float) -> Estimate:
        """From recent durations of similar tasks; ``fallback`` (the catalog's figure) when there are few."""
        if len(samples) >= 3:
            middle = statistics.median(samples)
            spread = statistics.pstdev(samples)
        elif samples:
            middle, spread = statistics.fmean(samples), 0.15 * statistics.fmean(samples)
        else:
            middle, spread = fallback, 0.2 * fallback
        return cls(seconds=middle, spread=max(spread, 0.05 * middle, MIN_INTERVAL))


def next_poll_delay(elapsed: float, estimate: Estimate, poll_interval: float) -> float:
    """Seconds until the next status check of a task ``elapsed`` seconds into its generation.

    Before the likely window (expected end minus two spreads) one check every ``poll_interval``, landing
    on the window's start; inside it a check every half spread; once overdue, backing off again.
    Always between one second and ``poll_interval``.
    """
    window_start = estimate.seconds - 2 * estimate.spread
    window_end = estimate.seconds + 2 * estimate.spread
    if elapsed < window_start:
        delay = window_start - elapsed
    elif elapsed <= window_end:
        delay = estimate.spread / 2
    else:
        delay = estimate.spread / 2 + (elapsed - window_end) / 4
    return min(max(delay, MIN_INTERVAL), poll_interval)
