"""RateLimiter on a fake clock: pacing, running-task slots, FIFO order, holds, stale refreshes."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from wanx_mcp.catalog import WAN_21_22, WAN_25_26, RateLimit
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio
FAMILY = WAN_21_22.family


class FakeTime:
    """A clock that only moves when the limiter sleeps: a sleep jumps straight to its end."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def limiter(time: FakeTime, *, sps: int = 2, running: int = 2, **options: float) -> RateLimiter:
    limits = {FAMILY: RateLimit(family=FAMILY, submissions_per_second=sps, running_tasks=running)}
    return RateLimiter(limits, clock=time.clock, sleep=time.sleep, **options)


async def settle() -> None:
    """Let every ready task run until it blocks (store calls run in a worker thread: real time passes)."""
    await anyio.sleep(0.15)


async def test_pace_allows_n_per_sliding_second() -> None:
    time = FakeTime()
    rl = limiter(time, sps=2)
    stamps = []
    for _ in range(5):
        await rl.pace(FAMILY)
        stamps.append(time.now)
    assert stamps == pytest.approx([0.0, 0.0, 1.1, 1.1, 2.2])


async def test_pace_serves_concurrent_callers_in_order() -> None:
    time = FakeTime()
    rl = limiter(time, sps=1, window=1.0)
    order: list[int] = []

    async def submit(n: int) -> None:
        await rl.pace(FAMILY)
        order.append(n)

    async with anyio.create_task_group() as group:
        for n in range(4):
            group.start_soon(submit, n)
            await settle()
    assert order == [0, 1, 2, 3]
    assert time.now == 3.0


async def test_slots_limit_running_tasks_and_free_on_final_status() -> None:
    time = FakeTime()
    rl = limiter(time, running=2)
    first, second = await rl.acquire(FAMILY), await rl.acquire(FAMILY)
    await first.assign("t1")
    await second.assign("t2")
    assert await rl.running(FAMILY) == 2
    assert sorted(await rl.holders(FAMILY)) == ["t1", "t2"]
    got = []
    async with anyio.create_task_group() as group:

        async def third() -> None:
            got.append(await rl.acquire(FAMILY))

        group.start_soon(third)
        await settle()
        assert not got and await rl.queued(FAMILY) == 1
        assert await rl.release("t1")
        await settle()
    assert len(got) == 1 and await rl.queued(FAMILY) == 0 and await rl.running(FAMILY) == 2
    assert not await rl.release("t1")  # already freed


async def test_waiters_are_served_first_come_first_served() -> None:
    time = FakeTime()
    rl = limiter(time, running=1)
    await rl.track("busy", FAMILY)
    order: list[int] = []

    async def waiter(n: int) -> None:
        slot = await rl.acquire(FAMILY)
        order.append(n)
        await slot.assign(f"t{n}")

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(waiter, n)
            await settle()
        assert await rl.queued(FAMILY) == 3
        for previous in ("busy", "t0", "t1"):
            await rl.release(previous)
            await settle()
    assert order == [0, 1, 2]


async def test_failed_create_frees_its_slot_at_once() -> None:
    time = FakeTime()
    rl = limiter(time, running=1)
    slot = await rl.acquire(FAMILY)
    await slot.release()
    assert await rl.running(FAMILY) == 0
    with anyio.fail_after(1):
        await rl.acquire(FAMILY)


async def test_ambiguous_hold_expires() -> None:
    time = FakeTime()
    rl = limiter(time, running=1, ambiguous_hold=30.0)
    await (await rl.acquire(FAMILY)).hold()
    assert await rl.running(FAMILY) == 1
    await rl.acquire(FAMILY)  # waits until the hold runs out
    assert time.now == 30.0


async def test_stale_holders_are_refreshed_while_waiting() -> None:
    time = FakeTime()
    rl = limiter(time, running=1, stale_after=10.0)
    await rl.track("old", FAMILY)
    calls: list[tuple[float, list[str]]] = []

    async def refresh(task_ids: list[str]) -> None:
        calls.append((time.now, task_ids))
        if len(calls) == 2:  # the second check finds it finished
            await rl.release("old")

    await rl.acquire(FAMILY, refresh=refresh)
    assert calls == [(10.0, ["old"]), (20.0, ["old"])]


async def test_cancelled_waiter_leaves_the_queue() -> None:
    time = FakeTime()
    rl = limiter(time, running=1)
    await rl.track("busy", FAMILY)
    got = []

    async def second() -> None:
        got.append(await rl.acquire(FAMILY))

    async with anyio.create_task_group() as group:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(rl.acquire, FAMILY)
            await settle()
            group.start_soon(second)
            await settle()
            assert await rl.queued(FAMILY) == 2
            doomed.cancel_scope.cancel()
        assert await rl.queued(FAMILY) == 1
        await rl.release("busy")
        await settle()
    assert len(got) == 1 and await rl.queued(FAMILY) == 0


async def test_track_is_idempotent_and_assign_keeps_one_slot_per_task() -> None:
    time = FakeTime()
    rl = limiter(time, running=3)
    await rl.track("t1", FAMILY)
    await rl.track("t1", FAMILY)
    assert await rl.running(FAMILY) == 1
    slot = await rl.acquire(FAMILY)
    await slot.assign("t1")  # the journal tracked it first
    assert await rl.running(FAMILY) == 1
    assert await rl.release("t1") and await rl.running(FAMILY) == 0


async def test_overrides_and_defaults() -> None:
    default = RateLimiter()
    assert default.limit(FAMILY) == WAN_21_22 and default.limit(WAN_25_26.family) == WAN_25_26
    everywhere = RateLimiter.with_overrides(running_tasks=1)
    assert [everywhere.limit(f).running_tasks for f in (FAMILY, WAN_25_26.family)] == [1, 1]
    one = RateLimiter.with_overrides(submissions_per_second={FAMILY: 7})
    assert one.limit(FAMILY).submissions_per_second == 7
    assert one.limit(WAN_25_26.family).submissions_per_second == WAN_25_26.submissions_per_second
    with pytest.raises(ValueError, match="unknown"):
        RateLimiter.with_overrides(running_tasks={"wan9": 1})
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter.with_overrides(running_tasks=0)
    with pytest.raises(ValueError, match="no rate limit"):
        await default.running("wan9")
    assert "wan2.1/2.2: 0/2 running, 0 queued" in await default.describe()


async def test_limiters_of_several_processes_share_the_slots_in_one_queue(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / "journal.sqlite3") for _ in range(2)]  # one connection per "process"
    for store in stores:
        await store.open()
    limits = {FAMILY: RateLimit(family=FAMILY, submissions_per_second=2, running_tasks=1)}
    a, b = (RateLimiter(limits, store=store, owner=f"host:{n}:aa") for n, store in enumerate(stores))
    first = await a.acquire(FAMILY)
    await first.assign("t-a")
    order: list[str] = []

    async def waiter(limiter: RateLimiter, name: str) -> None:
        slot = await limiter.acquire(FAMILY)
        order.append(name)
        await slot.assign(f"t-{name}")

    async with anyio.create_task_group() as group:
        for limiter, name in [(b, "b1"), (a, "a2"), (b, "b3")]:
            group.start_soon(waiter, limiter, name)
            await settle()
        assert await a.queued(FAMILY) == 3 and await b.running(FAMILY) == 1  # b sees a's slot
        for previous in ("t-a", "t-b1", "t-a2"):
            await (a if previous == "t-b1" else b).release(previous)  # whoever sees it end frees it
            await settle()
    assert order == ["b1", "a2", "b3"]  # first come, first served across processes
    assert await a.holders(FAMILY) == ["t-b3"]
    for store in stores:
        await store.close()


async def test_a_store_that_always_answers_late_still_lets_each_send_leave() -> None:
    """A busy machine: every clock reading is 0.2 s after the last. A send counted late is counted once more,
    never again and again until the window is full of its own counts (which froze every create)."""

    class SlowClock(FakeTime):
        def clock(self) -> float:
            self.now += 0.2
            return self.now

    time = SlowClock()
    rl = limiter(time, sps=2)
    for _ in range(6):
        with anyio.fail_after(5):
            await rl.pace(FAMILY)
