"""When to ask DashScope about a task next: sparse early, dense around the expected end.

A task's generation time is modelled as evenly likely anywhere in a *likely window*, the estimate ± √3
spreads. Before the window a task is checked only as often as ``poll_interval`` demands. Inside it, a check
at time ``t`` is made only if the task is still running then, so late checks are cheaper than early ones;
minimising the expected detection lag plus ``REQUEST_COST`` seconds per expected check gives gaps that shrink
with the time left in the window: ``gap = √(2 · REQUEST_COST · (window end − t))``. ``bench/RESULTS.md``
measures the trade-off against the official SDK.

All times are seconds of the clock the task runs on; ``time_scale`` (above 1 against a simulator that runs
faster than DashScope) divides the fixed floor and cost below, so a time-compressed run keeps its shape.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: The shortest wait between two checks of one task, in (unscaled) seconds.
MIN_INTERVAL = 1.0
#: The likely window's half-width in spreads: √3 standard deviations is the whole range of an evenly spread
#: duration and about 92 % of a normal one.
WINDOW_SPREADS = math.sqrt(3)
#: Seconds of detection lag one status request is worth (unscaled). Chosen with ``python -m bench``: about 0.7 of
#: the official SDK's mean lag on about 0.8 of its v2 client's requests; larger saves requests and costs lag.
REQUEST_COST = 0.13
#: Spread assumed for the catalog's figure, as a fraction of it, while there is no history.
FALLBACK_SPREAD = 0.2
#: How many samples' worth of weight that assumed spread keeps once there is history.
PRIOR_WEIGHT = 3


@dataclass(frozen=True)
class Estimate:
    """Expected generation time of a task and how much it varies (a standard deviation), in seconds."""

    seconds: float
    spread: float

    @classmethod
    def from_history(cls, samples: list[float], fallback: float, *, time_scale: float = 1.0) -> Estimate:
        """From recent durations of similar tasks, and ``fallback`` (the catalog's figure) as a prior.

        The middle is the samples' median (with three or more), else their mean weighed with the fallback. The
        spread pools the samples' variance with a prior one (``FALLBACK_SPREAD`` of the middle, counted as
        ``PRIOR_WEIGHT`` samples), so that a few similar durations do not make the window too narrow, and
        widens by how uncertain the middle still is (``√(1 + 1/n)``).
        """
        n = len(samples)
        if n == 0:
            middle, spread = fallback, FALLBACK_SPREAD * fallback
        else:
            middle = statistics.median(samples) if n >= 3 else (sum(samples) + fallback) / (n + 1)
            prior = FALLBACK_SPREAD * middle
            variance = statistics.variance(samples) if n >= 2 else 0.0
            pooled = (PRIOR_WEIGHT * prior**2 + (n - 1) * variance) / (PRIOR_WEIGHT + n - 1)
            spread = math.sqrt(pooled * (1 + 1 / n))
        return cls(seconds=middle, spread=max(spread, 0.05 * middle, MIN_INTERVAL / time_scale))

    @property
    def window(self) -> tuple[float, float]:
        """When the task most likely ends: (earliest, latest) seconds into its generation."""
        half = WINDOW_SPREADS * self.spread
        return self.seconds - half, self.seconds + half


def next_poll_delay(elapsed: float, estimate: Estimate, poll_interval: float, *, time_scale: float = 1.0) -> float:
    """Seconds until the next status check of a task ``elapsed`` seconds into its generation.

    Before the likely window, one check every ``poll_interval``, landing half a gap into the window; inside
    it, ever shorter gaps; once overdue, backing off again. Always between ``MIN_INTERVAL`` (divided by
    ``time_scale``) and ``poll_interval``.
    """
    floor, cost = MIN_INTERVAL / time_scale, REQUEST_COST / time_scale
    start, end = estimate.window
    first = start + math.sqrt(2 * cost * (end - start)) / 2
    if elapsed < first:
        delay = first - elapsed
    elif elapsed <= end:
        delay = math.sqrt(2 * cost * (end - elapsed))
    else:
        delay = math.sqrt(cost * (end - start)) + (elapsed - end) / 4
    return min(max(delay, floor), poll_interval)
