"""The TaskStore contract, run against every backend: SQLite always, PostgreSQL when ``pg_url`` is available.

Two instances on one location stand for two processes (each with its own connections): what one writes the
other must see, and their compare-and-set, leases, tickets and slots must exclude each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from wanx_mcp.store.base import TaskStore
from wanx_mcp.tasks import Status, Task, utcnow

pytestmark = pytest.mark.anyio
FAMILY = "wan2.1/2.2"
REQUEST = {"model": "wan2.2-i2v-flash", "image": "file a.png (PNG 640x480, 3 KB)"}
T0 = 1_000_000.0

MakeStore = Callable[[], Awaitable[TaskStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Open stores on one fresh location of the backend; all are closed at the end."""
    opened: list[TaskStore] = []
    if request.param == "sqlite":
        from wanx_mcp.store.sqlite import SQLiteStore

        def new() -> TaskStore:
            return SQLiteStore(tmp_path / "journal.sqlite3")
    else:
        try:
            url = request.getfixturevalue("pg_url")
            from wanx_mcp.store.postgres import PostgresStore
        except (pytest.FixtureLookupError, ImportError) as exc:
            pytest.skip(f"no PostgreSQL backend here: {exc}")

        def new() -> TaskStore:
            return PostgresStore(url)

    async def make() -> TaskStore:
        store = new()
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> TaskStore:
    return await make_store()


def task(task_id: str, status: Status = Status.PENDING, **fields: object) -> Task:
    defaults = {
        "model": "wan2.2-i2v-flash",
        "resolution": "720P",
        "duration": 5,
        "created_at": "2026-11-24T10:00:00.000Z",
    }
    return Task.model_validate({"task_id": task_id, "status": status, **defaults, **fields})


# ---- tasks ---------------------------------------------------------------------------------------------


async def test_tasks_are_versioned_and_updates_compare_and_set(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    assert await one.insert_task(task("task-0001"), REQUEST)
    assert not await two.insert_task(task("task-0001", Status.RUNNING), REQUEST)  # no overwrite by insert
    record = await two.record("task-0001")
    assert record is not None and record.version == 1 and record.task.status is Status.PENDING
    assert await one.update_task(task("task-0001", Status.RUNNING), 1) == 2
    # the other process still holds version 1: its stale write is refused, the newer state stays
    assert await two.update_task(task("task-0001", Status.FAILED), 1) is None
    assert (await two.get("task-0001")).status is Status.RUNNING
    assert await two.update_task(task("task-0001", Status.SUCCEEDED), 2, generation_seconds=42.0) == 3
    assert [status for _, status in await one.events("task-0001")] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert await one.request_of("task-0001") == REQUEST
    assert await one.generation_seconds("wan2.2-i2v-flash", "720P", 5) == [42.0]
    assert await one.generation_seconds("wan2.2-i2v-plus", "720P", 5) == []
    assert await one.update_task(task("task-missing"), 1) is None


async def test_modify_reapplies_a_change_to_the_freshest_state(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    await one.insert_task(task("task-0002"), REQUEST)
    stale = await two.record("task-0002")
    await one.update_task(task("task-0002", Status.RUNNING, notes=["first"]), 1)
    # two's change is applied to what one wrote, not to its stale copy
    done = await two.modify("task-0002", lambda t: t.model_copy(update={"notes": [*t.notes, "second"]}))
    assert stale is not None and stale.version == 1
    assert done is not None and done.status is Status.RUNNING and done.notes == ["first", "second"]
    assert (await one.record("task-0002")).version == 3
    assert await two.modify("task-0002", lambda t: None) == done  # no change: nothing written
    assert (await one.record("task-0002")).version == 3
    assert await two.modify("task-nope", lambda t: t) is None


async def test_concurrent_modifications_are_all_kept(make_store: MakeStore) -> None:
    stores = [await make_store() for _ in range(3)]
    await stores[0].insert_task(task("task-0003"), REQUEST)

    async def note(store: TaskStore, n: int) -> None:
        await store.modify("task-0003", lambda t: t.model_copy(update={"notes": [*t.notes, str(n)]}), attempts=50)

    async with anyio.create_task_group() as group:
        for n in range(9):
            group.start_soon(note, stores[n % 3], n)
    final = await stores[1].get("task-0003")
    assert final is not None and sorted(final.notes) == [str(n) for n in range(9)]
    assert (await stores[2].record("task-0003")).version == 10


async def test_listing_unfinished_and_download_notes(store: TaskStore) -> None:
    for n, (task_id, status, path) in enumerate([
        ("t-pending", Status.PENDING, None), ("t-running", Status.RUNNING, None),
        ("t-saved", Status.SUCCEEDED, "/v.mp4"), ("t-unsaved", Status.SUCCEEDED, None),
        ("t-failed", Status.FAILED, None),
    ]):  # fmt: skip
        await store.insert_task(task(task_id, status, video_path=path, created_at=f"2026-11-24T10:00:0{n}.000Z"), {})
    assert [t.task_id for t in await store.unfinished()] == ["t-pending", "t-running", "t-unsaved"]
    assert [t.task_id for t in await store.list_tasks(limit=2)] == ["t-failed", "t-unsaved"]
    assert [t.task_id for t in await store.list_tasks(Status.SUCCEEDED)] == ["t-unsaved", "t-saved"]
    assert await store.note_download_failure("t-unsaved", "HTTP 503") == 1
    assert await store.note_download_failure("t-unsaved", "HTTP 502") == 2
    record = await store.record("t-unsaved")
    assert record.download_attempts == 2 and record.download_error == "HTTP 502" and record.version == 1
    await store.update_task(task("t-unsaved", Status.SUCCEEDED, video_path="/u.mp4"), 1)
    saved = await store.record("t-unsaved")
    assert (saved.task.video_path, saved.download_attempts, saved.download_error) == ("/u.mp4", 2, "HTTP 502")
    assert [t.task_id for t in await store.unfinished()] == ["t-pending", "t-running"]


async def test_waiters_are_woken_by_a_write_of_another_instance(make_store: MakeStore) -> None:
    writer, waiter = await make_store(), await make_store()
    await writer.insert_task(task("task-0004"), REQUEST)
    assert await waiter.wait_for_change("task-0004", 0, 5) == 1  # newer already: at once
    assert await waiter.wait_for_change("task-0004", 1, 0.2) == 1  # nothing happened: times out
    assert await waiter.wait_for_change("task-nope", 0, 0.1) == 0
    woken: list[tuple[int, float]] = []

    async def wait() -> None:
        started = anyio.current_time()
        woken.append((await waiter.wait_for_change("task-0004", 1, 10), anyio.current_time() - started))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(0.2)
        await writer.update_task(task("task-0004", Status.RUNNING), 1)
    assert woken and woken[0][0] == 2 and woken[0][1] < 5  # woken by the write, not by the timeout


# ---- submissions ---------------------------------------------------------------------------------------


async def test_submissions_outcomes_and_unresolved_ones(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    await one.heartbeat("alive", 30, T0)
    await one.heartbeat("dead", 30, T0 - 60)
    ok = await one.record_submission("wan2.2-i2v-flash", REQUEST, owner="alive", estimated_cost_cny=0.7)
    lost = await one.record_submission("wan2.2-i2v-flash", REQUEST, owner="alive")
    crashed = await one.record_submission("wan2.2-i2v-plus", REQUEST, owner="dead")
    in_flight = await one.record_submission("wan2.2-i2v-flash", REQUEST, owner="alive")
    failed = await one.record_submission("wan2.2-i2v-flash", REQUEST, owner="alive")
    await one.finish_submission(ok, "created", task_id="task-0005")
    await one.finish_submission(lost, "ambiguous", error="the answer was lost")
    await one.finish_submission(failed, "failed", error="InvalidParameter")
    assert [s.id for s in await two.submissions()] == [failed, in_flight, crashed, lost, ok]
    created = (await two.submissions("created"))[0]
    assert (created.task_id, created.owner, created.estimated_cost_cny, created.request) == (
        "task-0005", "alive", 0.7, REQUEST)  # fmt: skip
    unresolved = await two.unresolved_submissions(T0)
    assert [s.id for s in unresolved] == [lost, crashed]  # not the one a live owner is still sending
    assert unresolved[0].error == "the answer was lost" and unresolved[1].model == "wan2.2-i2v-plus"

    # both processes find the lost task: exactly one adoption wins
    found = task("task-0006", notes=["found in DashScope's task list"])
    results = [await one.adopt(lost, found, REQUEST), await two.adopt(lost, found, REQUEST)]
    assert results == [True, False]
    assert (await two.get("task-0006")).notes == ["found in DashScope's task list"]
    recovered = (await one.submissions("recovered"))[0]
    assert (recovered.id, recovered.task_id) == (lost, "task-0006")
    assert [s.id for s in await one.unresolved_submissions(T0)] == [crashed]
    assert not await one.adopt(ok, task("task-0007"), REQUEST)  # resolved already
    assert await one.get("task-0007") is None


async def test_spend_counts_what_may_be_billed(store: TaskStore) -> None:
    since = utcnow() - timedelta(seconds=5)
    costs = {}
    for name, cost in [("created", 1.0), ("ambiguous", 2.0), ("sent", 4.0), ("failed", 8.0), ("task-failed", 16.0),
                       ("canceled", 32.0), ("none", None)]:  # fmt: skip
        costs[name] = await store.record_submission("wan2.2-i2v-flash", REQUEST, owner="o", estimated_cost_cny=cost)
    await store.finish_submission(costs["created"], "created", task_id="t-ok")
    await store.finish_submission(costs["ambiguous"], "ambiguous")
    await store.finish_submission(costs["failed"], "failed")
    await store.insert_task(task("t-ok"), REQUEST)
    for name, status in [("task-failed", Status.FAILED), ("canceled", Status.CANCELED)]:
        await store.insert_task(task(f"t-{name}", status), REQUEST)
        await store.finish_submission(costs[name], "created", task_id=f"t-{name}")
    assert await store.spend_since(since) == pytest.approx(7.0)
    assert await store.spend_since(utcnow() + timedelta(seconds=5)) == 0.0


# ---- owners and leases ---------------------------------------------------------------------------------


async def test_leases_exclude_each_other_and_expire(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    for n in range(3):
        await one.insert_task(task(f"task-l{n}", created_at=f"2026-11-24T10:00:0{n}.000Z"), REQUEST)
    assert await one.acquire_lease("task-l0", "A", 30, T0)
    assert not await two.acquire_lease("task-l0", "B", 30, T0 + 1)
    assert await one.acquire_lease("task-l0", "A", 30, T0 + 2)  # the holder may take it again
    assert await two.acquire_lease("task-l1", "B", 30, T0)
    assert [t.task_id for t in await one.unfinished(unleased_at=T0 + 5)] == ["task-l2"]
    leases = {lease.task_id: lease for lease in await two.leases(T0 + 5)}
    assert set(leases) == {"task-l0", "task-l1"} and leases["task-l0"].owner == "A"
    assert leases["task-l0"].expires_at == pytest.approx(T0 + 32)

    assert await one.renew_leases("A", 30, T0 + 20) == ["task-l0"]
    # B's lease lapsed (not renewed): A takes it over, and B's late renewal does not get it back
    assert [t.task_id for t in await one.unfinished(unleased_at=T0 + 31)] == ["task-l1", "task-l2"]
    assert await one.acquire_lease("task-l1", "A", 30, T0 + 31)
    assert await two.renew_leases("B", 30, T0 + 32) == []
    assert sorted(await one.renew_leases("A", 30, T0 + 33)) == ["task-l0", "task-l1"]
    await one.release_lease("task-l0", "B")  # not B's: no effect
    await one.release_lease("task-l0", "A")
    assert await two.acquire_lease("task-l0", "B", 30, T0 + 34)


async def test_heartbeats_and_retirement(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    await one.heartbeat("A", 30, T0)
    await two.heartbeat("B", 30, T0)
    assert sorted(await one.live_owners(T0 + 10)) == ["A", "B"]
    await two.heartbeat("B", 30, T0 + 20)
    assert await one.live_owners(T0 + 40) == ["B"]
    await one.insert_task(task("task-r1"), REQUEST)
    await two.acquire_lease("task-r1", "B", 30, T0 + 20)
    ticket = await two.enqueue(FAMILY, "B", T0 + 20)
    slot = await two.take_slot(FAMILY, ticket, 2, T0 + 20)
    await two.track_task(FAMILY, "task-r1", "B")
    await two.enqueue(FAMILY, "B", T0 + 20)
    await two.retire("B")
    assert await one.live_owners(T0 + 21) == ["A"]
    assert await one.leases(T0 + 21) == []
    assert await one.queued(FAMILY, T0 + 21) == 0
    assert slot is not None and await one.slot_holders(FAMILY, T0 + 21) == ["task-r1"]  # the task still runs
    assert await one.running(FAMILY, T0 + 21) == 1


# ---- rate limits ---------------------------------------------------------------------------------------


async def test_slots_are_taken_in_ticket_order_across_instances(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    for owner in "AB":
        await one.heartbeat(owner, 30, T0)
    first, second, third = (await one.enqueue(FAMILY, "A", T0), await two.enqueue(FAMILY, "B", T0),
                            await one.enqueue(FAMILY, "A", T0))  # fmt: skip
    assert first < second < third and await two.queued(FAMILY, T0) == 3
    version = await two.limits_version(FAMILY)
    assert await two.take_slot(FAMILY, second, 2, T0) is None  # not first in line
    a = await one.take_slot(FAMILY, first, 2, T0)
    assert a is not None and await two.limits_version(FAMILY) > version
    b = await two.take_slot(FAMILY, second, 2, T0)
    assert b is not None and await one.take_slot(FAMILY, third, 2, T0) is None  # the family is full
    assert await one.running(FAMILY, T0) == 2 and await one.queued(FAMILY, T0) == 1

    await one.assign_slot(a, "task-a")
    await two.free_slot(b)  # B's create failed without a task
    c = await one.take_slot(FAMILY, third, 2, T0)
    assert c is not None
    await one.assign_slot(c, "task-c")
    assert sorted(await two.slot_holders(FAMILY, T0)) == ["task-a", "task-c"]
    assert await two.release_task("task-a") and not await two.release_task("task-a")
    assert await one.slot_holders(FAMILY, T0) == ["task-c"]


async def test_limit_waiters_are_woken_by_another_instance(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    await one.heartbeat("A", 30, T0)
    before = await two.limits_version(FAMILY)
    assert await two.wait_for_limits(FAMILY, before, 0.2) == before  # nothing happened: times out
    woken: list[tuple[int, float]] = []

    async def wait() -> None:
        started = anyio.current_time()
        woken.append((await two.wait_for_limits(FAMILY, before, 10), anyio.current_time() - started))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(0.2)
        await one.enqueue(FAMILY, "A", T0)
    assert woken and woken[0][0] > before and woken[0][1] < 5
    assert await one.limits_version("wan2.5/2.6") == 0  # families are apart


async def test_tracking_keeps_one_slot_per_task(store: TaskStore) -> None:
    await store.heartbeat("A", 30, T0)
    await store.track_task(FAMILY, "task-t", "A")
    await store.track_task(FAMILY, "task-t", "B")
    assert await store.running(FAMILY, T0) == 1
    slot = await store.take_slot(FAMILY, await store.enqueue(FAMILY, "A", T0), 2, T0)
    assert slot is not None and await store.running(FAMILY, T0) == 2
    await store.assign_slot(slot, "task-t")  # tracked already: this slot is freed instead
    assert await store.running(FAMILY, T0) == 1 and await store.slot_holders(FAMILY, T0) == ["task-t"]


async def test_holds_and_lapsed_owners_free_their_slots(store: TaskStore) -> None:
    await store.heartbeat("A", 30, T0)
    await store.heartbeat("dead", 10, T0)
    held = await store.take_slot(FAMILY, await store.enqueue(FAMILY, "A", T0), 2, T0)
    await store.hold_slot(held, T0 + 120)
    crashed = await store.take_slot(FAMILY, await store.enqueue(FAMILY, "dead", T0), 2, T0)
    assert crashed is not None and await store.running(FAMILY, T0 + 5) == 2
    stuck = await store.enqueue(FAMILY, "dead", T0)  # a waiter of the dead owner must not block others
    waiting = await store.enqueue(FAMILY, "A", T0)
    assert await store.running(FAMILY, T0 + 11) == 1  # the dead owner's in-flight slot is gone
    assert await store.queued(FAMILY, T0 + 11) == 1
    mine = await store.take_slot(FAMILY, waiting, 2, T0 + 11)
    assert mine is not None and stuck < waiting
    await store.heartbeat("A", 30, T0 + 100)
    assert await store.running(FAMILY, T0 + 119) == 2
    assert await store.running(FAMILY, T0 + 121) == 1  # the hold expired


async def test_leaving_the_queue_lets_the_next_one_in(store: TaskStore) -> None:
    await store.heartbeat("A", 30, T0)
    first, second = await store.enqueue(FAMILY, "A", T0), await store.enqueue(FAMILY, "A", T0)
    await store.leave_queue(first)
    assert await store.take_slot(FAMILY, second, 1, T0) is not None


async def test_pacing_counts_sends_in_a_sliding_window(make_store: MakeStore) -> None:
    one, two = await make_store(), await make_store()
    assert await one.reserve_send(FAMILY, 2, 1.1, T0) == 0
    assert await two.reserve_send(FAMILY, 2, 1.1, T0 + 0.5) == 0
    assert await one.reserve_send(FAMILY, 2, 1.1, T0 + 0.6) == pytest.approx(0.5)
    assert await two.reserve_send(FAMILY, 2, 1.1, T0 + 1.1) == 0
    assert await one.reserve_send("wan2.5/2.6", 2, 1.1, T0 + 1.1) == 0  # families are apart
    assert await one.reserve_send(FAMILY, 2, 1.1, T0 + 1.2) == pytest.approx(0.4)


async def test_many_instances_never_exceed_the_slots(make_store: MakeStore) -> None:
    stores = [await make_store() for _ in range(3)]
    in_use: list[int] = []
    peak = 0

    async def create(store: TaskStore, n: int) -> None:
        nonlocal peak
        owner = f"owner-{n % 3}"
        await store.heartbeat(owner, 30, T0)
        ticket = await store.enqueue(FAMILY, owner, T0)
        while (slot := await store.take_slot(FAMILY, ticket, 2, T0)) is None:
            await anyio.sleep(0.01)
        in_use.append(slot)
        peak = max(peak, len(in_use))
        await anyio.sleep(0.02)
        in_use.remove(slot)
        await store.free_slot(slot)

    async with anyio.create_task_group() as group:
        for n in range(12):
            group.start_soon(create, stores[n % 3], n)
    assert peak == 2 and await stores[0].running(FAMILY, T0) == 0


# ---- opening -------------------------------------------------------------------------------------------


async def test_location_and_schema(store: TaskStore) -> None:
    assert await store.schema_version() >= 1
    assert "password" not in store.location.lower() and store.location
    with pytest.raises(ValueError, match="nonsense"):  # an outcome outside the contract is refused
        await store.finish_submission(await store.record_submission("m", {}, owner="o"), "nonsense")


async def test_a_dropped_ticket_is_reported(store: TaskStore) -> None:
    ticket = await store.enqueue(FAMILY, "never-alive", T0)  # no heartbeat: the ticket is not live
    with pytest.raises(LookupError):
        await store.take_slot(FAMILY, ticket, 2, T0)
