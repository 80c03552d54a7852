"""Account-wide rate limiting per rate-limit family, so bursts queue instead of drawing 429s.

Two limits per family (``catalog.RateLimit``), kept in the task store and so shared by every process on it:

- submissions: at most ``submissions_per_second`` creates in any sliding second, plus a margin
  (:meth:`RateLimiter.pace`);
- running tasks: at most ``running_tasks`` slots (:meth:`RateLimiter.acquire`). A slot is taken before a
  create is sent and then belongs to the created task until someone sees that task reach a final status
  (:meth:`RateLimiter.release`); it is freed at once if the create failed without creating a task.

Waiters are served first come, first served, across processes (tickets in the store). After an ambiguous
create (the request was sent but the answer was lost) nobody knows whether a task holds the slot, so it is
*held* for ``ambiguous_hold`` seconds (default 120 s, about the typical generation time): long enough that a
burst of retries cannot overshoot the quota, short enough that a lost answer does not block the family for
good. Should the task exist and run longer, DashScope answers the surplus with 429 or queues it, which the
client handles. A process that dies frees its in-flight slots and queue places when its heartbeat lapses.

Without a store the limiter keeps its state in a private in-memory SQLite store (one process only).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .catalog import RateLimit, rate_limits
from .store import JournalError, TaskStore, new_owner_id

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Refresh = Callable[[list[str]], Awaitable[None]]

#: Seconds over which submissions_per_second is counted: one, plus a margin for network jitter so that
#: DashScope, counting arrivals, never sees more than its limit in one second.
WINDOW = 1.1
#: Seconds a counted submission may leave after the time it was counted at: half the window's margin.
SLACK = (WINDOW - 1.0) / 2
#: Seconds a waiter goes without looking at the store again (other processes' holds expire meanwhile).
RECHECK = 1.0
#: Seconds the owner of a ticket or of an in-flight create counts as alive after its last heartbeat.
OWNER_TTL = 30.0


class Slot:
    """One running-task place in a family: reserved for a create, then owned by its task id."""

    __slots__ = ("_limiter", "family", "id", "task_id")

    def __init__(self, limiter: RateLimiter, family: str, slot_id: int) -> None:
        self._limiter = limiter
        self.family = family
        self.id = slot_id
        self.task_id: str | None = None

    async def assign(self, task_id: str) -> None:
        """The create succeeded: the slot now belongs to ``task_id`` until it is released. Should the store not
        take it now, it is retried on the limiter's next use (the created task must not be lost over it)."""
        self.task_id = task_id
        self._limiter._unassigned[self.id] = task_id
        await self._limiter._assign_pending()

    async def release(self) -> None:
        """Free the slot now (the create failed without creating a task)."""
        await (await self._limiter.store()).free_slot(self.id)

    async def hold(self, seconds: float | None = None) -> None:
        """Keep the slot for ``seconds`` (default: the limiter's ``ambiguous_hold``), then free it."""
        limiter = self._limiter
        until = limiter.clock() + (limiter.ambiguous_hold if seconds is None else seconds)
        limiter._holds[self.id] = until
        await (await limiter.store()).hold_slot(self.id, until)

    def __repr__(self) -> str:
        return f"Slot(family={self.family!r}, id={self.id}, task_id={self.task_id!r})"


@dataclass
class _Family:
    limit: RateLimit
    queue: deque[int] = field(default_factory=deque)  # this process's tickets, oldest first
    pace_lock: anyio.Lock = field(default_factory=anyio.Lock)


class RateLimiter:
    """Per-family submission pacing and running-task slots, shared by every client given this limiter and,
    through ``store``, by every process using that store. Use one limiter from one event loop."""

    def __init__(
        self,
        limits: Mapping[str, RateLimit] | None = None,
        *,
        store: TaskStore | None = None,
        owner: str | None = None,
        clock: Clock = time.time,
        sleep: Sleep = anyio.sleep,
        stale_after: float = 10.0,
        ambiguous_hold: float = 120.0,
        window: float = WINDOW,
        owner_ttl: float = OWNER_TTL,
    ) -> None:
        """``store``: where the state lives (default: a private in-memory one); ``owner``: this process's id in
        it; ``clock``: epoch seconds, the same in every process; ``stale_after``: seconds a create waits for a
        slot before the holders' statuses are refreshed; ``window``: seconds in which at most
        ``submissions_per_second`` creates are sent; ``owner_ttl``: see ``OWNER_TTL``."""
        limits = rate_limits() if limits is None else limits
        for name, limit in limits.items():
            if limit.submissions_per_second < 1 or limit.running_tasks < 1:
                raise ValueError(f"{name!r} must allow at least 1 submission and 1 running task")
        self._families = {name: _Family(limit) for name, limit in limits.items()}
        self._store = store
        self._private = store is None
        self._opening = anyio.Lock()
        self.owner = owner or new_owner_id()
        self.clock = clock
        self._sleep = sleep
        self.stale_after = stale_after
        self.ambiguous_hold = ambiguous_hold
        self.window = window
        self.owner_ttl = owner_ttl
        self._holds: dict[int, float] = {}  # slot id -> when this process's hold on it ends
        self._unassigned: dict[int, str] = {}  # slot id -> the task it is for, not yet written to the store

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

    async def store(self) -> TaskStore:
        """The store holding the limits' state (the private one is opened on first use)."""
        if self._store is None:
            from .store.sqlite import SQLiteStore

            async with self._opening:
                if self._store is None:
                    store = SQLiteStore(Path(":memory:"))
                    await store.open()
                    self._store = store
        return self._store

    async def aclose(self) -> None:
        """Close the private store, if one was opened (a given store belongs to whoever gave it)."""
        if self._private and self._store is not None:
            await self._store.close()
            self._store = None

    async def running(self, family: str) -> int:
        """Slots of ``family`` in use: tasks considered running, creates in flight, ambiguous holds."""
        self._family(family)
        return await (await self.store()).running(family, self.clock())

    async def queued(self, family: str) -> int:
        """Creates of ``family`` waiting for a slot, in every process."""
        self._family(family)
        return await (await self.store()).queued(family, self.clock())

    async def holders(self, family: str) -> list[str]:
        """Task ids holding slots of ``family``."""
        self._family(family)
        return await (await self.store()).slot_holders(family, self.clock())

    async def track(self, task_id: str, family: str) -> None:
        """Count an already running task (e.g. found in the journal after a restart) against ``family``."""
        self._family(family)
        await (await self.store()).track_task(family, task_id, self.owner)

    async def release(self, task_id: str) -> bool:
        """``task_id`` reached a final status: free its slot. False if it held none."""
        return await (await self.store()).release_task(task_id)

    async def acquire(self, family: str, *, refresh: Refresh | None = None) -> Slot:
        """Wait, in FIFO order across processes, for a free running-task slot of ``family`` and take it.

        While first in this process's line and waiting longer than ``stale_after``, call ``refresh`` with the
        task ids holding the slots (the client checks their statuses, which releases finished ones), and again
        after every further ``stale_after``.
        """
        state, store = self._family(family), await self.store()
        await self._assign_pending()
        await store.heartbeat(self.owner, self.owner_ttl, self.clock())
        ticket = await store.enqueue(family, self.owner, self.clock())
        state.queue.append(ticket)
        next_refresh = self.clock() + self.stale_after
        logged = False
        try:
            while True:
                version = await store.limits_version(family)
                now = self.clock()
                await store.heartbeat(self.owner, self.owner_ttl, now)
                try:
                    slot_id = await store.take_slot(family, ticket, state.limit.running_tasks, now)
                except LookupError:  # our ticket lapsed (this process stalled): queue again at the end
                    state.queue.remove(ticket)
                    ticket = await store.enqueue(family, self.owner, now)
                    state.queue.append(ticket)
                    continue
                if slot_id is not None:
                    return Slot(self, family, slot_id)
                if not logged:
                    logged = True
                    log.info("queued for %s: %d slots in use, %d waiting", family,
                             await store.running(family, now), await store.queued(family, now))  # fmt: skip
                self._holds = {slot: until for slot, until in self._holds.items() if until > now}
                deadlines = [*self._holds.values(), *([next_refresh] if refresh is not None else [])]
                await self._wait(store, family, version, max(0.0, min(deadlines) - now) if deadlines else None)
                if refresh is None or self.clock() < next_refresh or state.queue[0] != ticket:
                    continue
                task_ids = await store.slot_holders(family, self.clock())
                if task_ids:
                    log.info("waited %.0f s for a %s slot: refreshing %s", self.stale_after, family, task_ids)
                    await refresh(task_ids)
                next_refresh = self.clock() + self.stale_after
        finally:
            state.queue.remove(ticket)
            with anyio.CancelScope(shield=True):
                await store.leave_queue(ticket)

    async def pace(self, family: str) -> None:
        """Wait until one more submission of ``family`` fits in the sliding window, and count it."""
        state, store = self._family(family), await self.store()
        async with state.pace_lock:  # this process's callers in order
            recounted = False
            while True:
                asked = self.clock()
                wait = await store.reserve_send(family, state.limit.submissions_per_second, self.window, asked)
                if wait:
                    await self._sleep(wait)
                elif recounted or self.clock() - asked <= SLACK:
                    return
                else:
                    # the store answered late (a busy machine): the request would leave later than it was
                    # counted, so it is counted once more at the time it really leaves (over-counting only slows
                    # pacing; counting again and again could fill the window with this one send's counts)
                    recounted = True

    async def _assign_pending(self) -> None:
        """Write the slots' owners the store could not take before (it failing again is only logged)."""
        store = await self.store()
        for slot_id, task_id in list(self._unassigned.items()):
            try:
                await store.assign_slot(slot_id, task_id)
            except JournalError as exc:
                log.warning("could not record that task %s holds its slot (will retry): %s", task_id, exc)
                return
            self._unassigned.pop(slot_id, None)

    def _family(self, family: str) -> _Family:
        try:
            return self._families[family]
        except KeyError:
            raise ValueError(f"no rate limit for {family!r}; known: {sorted(self._families)}") from None

    async def _wait(self, store: TaskStore, family: str, version: int, timeout: float | None) -> None:
        """Until the family's state changes (in any process), ``RECHECK`` passes, or ``timeout`` seconds on the
        limiter's own sleep pass."""
        async with anyio.create_task_group() as group:

            async def alarm(seconds: float) -> None:
                await self._sleep(seconds)
                group.cancel_scope.cancel()

            if timeout is not None:
                group.start_soon(alarm, timeout)
            await store.wait_for_limits(family, version, RECHECK)
            group.cancel_scope.cancel()

    async def describe(self) -> str:
        """Each family's slots in use, limit and waiting creates, in one line."""
        parts = [
            f"{name}: {await self.running(name)}/{s.limit.running_tasks} running, {await self.queued(name)} queued"
            for name, s in self._families.items()
        ]
        return ", ".join(parts)

    def __repr__(self) -> str:
        limits = ", ".join(f"{name}: {s.limit.running_tasks} running" for name, s in self._families.items())
        return f"RateLimiter({limits}; owner {self.owner})"
