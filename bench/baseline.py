"""The poll schedule wanx-mcp had before the benchmark (git 3a6a6b7, wanx_mcp/schedule.py), kept for before/after.

Verbatim but for ``time_scale``, which divides the one-second floor as the current schedule does, so that the
comparison isolates the algorithm from the benchmark's time compression.
"""

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
    def from_history(cls, samples: list[float], fallback: float, *, time_scale: float = 1.0) -> Estimate:
        if len(samples) >= 3:
            middle = statistics.median(samples)
            spread = statistics.pstdev(samples)
        elif samples:
            middle, spread = statistics.fmean(samples), 0.15 * statistics.fmean(samples)
        else:
            middle, spread = fallback, 0.2 * fallback
        return cls(seconds=middle, spread=max(spread, 0.05 * middle, MIN_INTERVAL / time_scale))


def next_poll_delay(elapsed: float, estimate: Estimate, poll_interval: float, *, time_scale: float = 1.0) -> float:
    window_start = estimate.seconds - 2 * estimate.spread
    window_end = estimate.seconds + 2 * estimate.spread
    if elapsed < window_start:
        delay = window_start - elapsed
    elif elapsed <= window_end:
        delay = estimate.spread / 2
    else:
        delay = estimate.spread / 2 + (elapsed - window_end) / 4
    return min(max(delay, MIN_INTERVAL / time_scale), poll_interval)
