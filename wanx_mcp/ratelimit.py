"""Client-side rate limiting per rate-limit family, so bursts queue locally instead of drawing 429s.

Two limits per family (``catalog.RateLimit``):

- submissions: at most ``submissions_per_second`` creates in any sliding second, plus a margin
  (:meth:`RateLimiter.pace`);
- running tasks: at most ``running_tasks`` slots (:meth:`RateLimiter.acquire`). A slot is taken before a
  create is sent and then belongs to the created task until someone sees that task reach a final status
  (:meth:`RateLimiter.release`); it is freed at once if the create failed without creating a task.

Waiters are served first come, first served. After an ambiguous create (the request was sent but the answer
was lost) nobody knows whether a task holds the slot, so it is *held* for ``ambiguous_hold`` seconds
(default 120 s, about the typical generation time): long enough that a burst of retries cannot overshoot
the quota, short enough that a lost answer does not block the family for good. Should the task exist and
run longer, DashScope answers the surplus with 429 or queues it, which the client handles.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from .catalog import RateLimit, rate_limits

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Refresh = Callable[[list[str]], Awaitable[None]]

#: Seconds over which submissions_per_second is counted: one, plus a margin for network jitter so that
#: DashScope, counting arrivals, never sees more than its limit in one second.
WINDOW = 1.1


class Slot:
    """One running-task place in a family: reserved for a create, then owned by its task id."""

    __slots__ = ("_limiter", "expires", "family", "task_id")

    def __init__(self, limiter: RateLimiter, family: str, task_id: str | None = None) -> None:
        self._limiter = limiter
        self.family = family
        self.task_id = task_id
        self.expires: float | None = None

    def assign(self, task_id: str) -> None:
        """The create succeeded: the slot now belongs to ``task_id`` until it is released."""
        self._limiter._assign(self, task_id)

    def release(self) -> None:
        """Free the slot now (the create failed without creating a task)."""
        self._limiter._free(self)

    def hold(self, seconds: float | None = None) -> None:
        """Keep the slot for ``seconds`` (default: the limiter's ``ambiguous_hold``), then free it."""
        self._limiter._hold(self, seconds)

    def __repr__(self) -> str:
        return f"Slot(family={self.family!r}, task_id={self.task_id!r}, expires={self.expires!r})"


@dataclass
class _Family:
    limit: RateLimit
    holders: set[Slot] = field(default_factory=set)
    queue: deque[object] = field(default_factory=deque)
    sent: deque[float] = field(default_factory=deque)
    changed: anyio.Event = field(default_factory=anyio.Event)
    pace_lock: anyio.Lock = field(default_factory=anyio.Lock)


class RateLimiter:
    """Per-family submission pacing and running-task slots, shared by every client that is given it.

    Not thread-safe: use one limiter from one event loop.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimit] | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        stale_after: float = 10.0,
        ambiguous_hold: float = 120.0,
        window: float = WINDOW,
    ) -> None:
        """``stale_after``: seconds a create waits for a slot before the holders' statuses are refreshed;
        ``window``: seconds in which at most ``submissions_per_second`` creates are sent."""
        limits = rate_limits() if limits is None else limits
        for name, limit in limits.items():
            if limit.submissions_per_second < 1 or limit.running_tasks < 1:
                raise ValueError(f"{name!r} must allow at least 1 submission and 1 running task")
        self._families = {name: _Family(limit) for name, limit in limits.items()}
        self._by_task: dict[str, Slot] = {}
        self._clock = clock
        self._sleep = sleep
        self.stale_after = stale_after
        self.ambiguous_hold = ambiguous_hold
        self.window = window

    @classmethod
    def with_overrides(
        cls,
        *,
        running_tasks: int | Mapping[str, int] | None = None,
        submissions_per_second: int | Mapping[str, int] | None = None,
        **options: Any,
    ) -> RateLimiter:
        """The catalog's limits with some replaced: an int for every family, or a mapping family -> int;
        ``options`` go to the constructor."""

        def pick(override: int | Mapping[str, int] | None, family: str, default: int) -> int:
            if override is None:
                return default
            if isinstance(override, int):
                return override
            return override.get(family, default)

        limits = {
            family: RateLimit(
                family=family,
                running_tasks=pick(running_tasks, family, limit.running_tasks),
                submissions_per_second=pick(submissions_per_second, family, limit.submissions_per_second),
            )
            for family, limit in rate_limits().items()
        }
        for override in (running_tasks, submissions_per_second):
            unknown = set(override) - set(limits) if isinstance(override, Mapping) else set()
            if unknown:
                raise ValueError(f"unknown rate-limit families {sorted(unknown)}; known: {sorted(limits)}")
        return cls(limits, **options)

    def limit(self, family: str) -> RateLimit:
        return self._family(family).limit

    def running(self, family: str) -> int:
        """Slots of ``family`` in use: tasks considered running, creates in flight, ambiguous holds."""
        state = self._family(family)
        self._expire(state)
        return len(state.holders)

    def queued(self, family: str) -> int:
        """Creates of ``family`` waiting locally for a slot."""
        return len(self._family(family).queue)

    def holders(self, family: str) -> list[str]:
        """Task ids holding slots of ``family``."""
        return [slot.task_id for slot in self._family(family).holders if slot.task_id]

    def track(self, task_id: str, family: str) -> None:
        """Count an already running task (e.g. found in the journal after a restart) against ``family``."""
        if task_id in self._by_task:
            return
        state = self._family(family)
        slot = Slot(self, family, task_id)
        state.holders.add(slot)
        self._by_task[task_id] = slot
        log.debug("tracking task %s in %s (%d running)", task_id, family, len(state.holders))

    def release(self, task_id: str) -> bool:
        """``task_id`` reached a final status: free its slot. False if it held none."""
        slot = self._by_task.get(task_id)
        if slot is None:
            return False
        self._free(slot)
        return True

    async def acquire(self, family: str, *, refresh: Refresh | None = None) -> Slot:
        """Wait, in FIFO order, for a free running-task slot of ``family`` and take it.

        While first in line and waiting longer than ``stale_after``, call ``refresh`` with the task ids
        holding the slots (the client checks their statuses, which releases finished ones), and again after
        every further ``stale_after``.
        """
        state = self._family(family)
        ticket = object()
        state.queue.append(ticket)
        if len(state.queue) > 1 or len(state.holders) >= state.limit.running_tasks:
            log.info(
                "queued locally for %s: %d tasks running, %d ahead",
                family, len(state.holders), len(state.queue) - 1,
            )  # fmt: skip
        next_refresh = self._clock() + self.stale_after
        try:
            while True:
                self._expire(state)
                first = state.queue[0] is ticket
                if first and len(state.holders) < state.limit.running_tasks:
                    slot = Slot(self, family)
                    state.holders.add(slot)
                    return slot
                changed = state.changed
                if not first:
                    await changed.wait()
                    continue
                deadlines = [slot.expires for slot in state.holders if slot.expires is not None]
                if refresh is not None:
                    deadlines.append(next_refresh)
                timeout = max(0.0, min(deadlines) - self._clock()) if deadlines else None
                if await self._wait(changed, timeout) or refresh is None or self._clock() < next_refresh:
                    continue
                task_ids = self.holders(family)
                if task_ids:
                    log.info("waited %.0f s for a %s slot: refreshing %s", self.stale_after, family, task_ids)
                    await refresh(task_ids)
                next_refresh = self._clock() + self.stale_after
        finally:
            state.queue.remove(ticket)
            self._notify(state)

    async def pace(self, family: str) -> None:
        """Wait until one more submission of ``family`` fits in the sliding second, and count it."""
        state = self._family(family)
        async with state.pace_lock:
            while True:
                now = self._clock()
                while state.sent and state.sent[0] <= now - self.window:
                    state.sent.popleft()
                if len(state.sent) < state.limit.submissions_per_second:
                    state.sent.append(now)
                    return
                await self._sleep(state.sent[0] + self.window - now)

    def _family(self, family: str) -> _Family:
        try:
            return self._families[family]
        except KeyError:
            raise ValueError(f"no rate limit for {family!r}; known: {sorted(self._families)}") from None

    def _assign(self, slot: Slot, task_id: str) -> None:
        state = self._family(slot.family)
        if task_id in self._by_task:  # already tracked (e.g. by the journal): keep a single slot
            self._free(slot)
            return
        slot.task_id, slot.expires = task_id, None
        state.holders.add(slot)
        self._by_task[task_id] = slot

    def _hold(self, slot: Slot, seconds: float | None) -> None:
        slot.expires = self._clock() + (self.ambiguous_hold if seconds is None else seconds)
        self._notify(self._family(slot.family))

    def _free(self, slot: Slot) -> None:
        state = self._family(slot.family)
        state.holders.discard(slot)
        if slot.task_id is not None and self._by_task.get(slot.task_id) is slot:
            del self._by_task[slot.task_id]
        self._notify(state)

    def _expire(self, state: _Family) -> None:
        now = self._clock()
        for slot in [s for s in state.holders if s.expires is not None and s.expires <= now]:
            log.debug("hold on a %s slot expired", slot.family)
            self._free(slot)

    @staticmethod
    def _notify(state: _Family) -> None:
        state.changed.set()
        state.changed = anyio.Event()

    async def _wait(self, event: anyio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds (on the limiter's sleep); True if it was set."""
        if timeout is None:
            await event.wait()
            return True
        async with anyio.create_task_group() as group:

            async def alarm() -> None:
                await self._sleep(timeout)
                group.cancel_scope.cancel()

            group.start_soon(alarm)
            await event.wait()
            group.cancel_scope.cancel()
        return event.is_set()

    def __repr__(self) -> str:
        families = ", ".join(
            f"{name}: {len(s.holders)}/{s.limit.running_tasks} running, {len(s.queue)} queued"
            for name, s in self._families.items()
        )
        return f"RateLimiter({families})"
