"""DashScopeClient against the simulator over real loopback HTTP, plus its pure helpers."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from support import unfinished_overlap

from wanx_mcp.catalog import WAN_21_22
from wanx_mcp.config import Settings
from wanx_mcp.dashscope import (
    AmbiguousCreate,
    DashScopeClient,
    TaskResponse,
    backoff_delay,
    parse_retry_after,
)
from wanx_mcp.errors import DashScopeError, InvalidInput, MissingApiKey
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.request import VideoRequest, build_request
from wanx_mcp.simulator import FamilyLimits, RunningSimulator
from wanx_mcp.tasks import Status

IMAGE = "https://example.com/cat.png"
SECRET = "sk-test-3f9a2c51d7e84b06"
FAMILY = WAN_21_22.family
IMAGE_DATA = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
MakeSimulator = Callable[..., RunningSimulator]

pytestmark = pytest.mark.anyio


def video(model: str = "wan2.2-i2v-flash", prompt: str = "a cat runs on the grass") -> VideoRequest:
    return build_request({"image": IMAGE, "model": model, "prompt": prompt})


def connect(sim: RunningSimulator, key: str | None = None, **options: Any) -> DashScopeClient:
    """A client with quick retries; ``options`` override the constructor's arguments."""
    settings: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0, **options}
    return DashScopeClient(key or sim.api_key, sim.base_url, **settings)


def unpaced(make_simulator: MakeSimulator, **config: Any) -> tuple[RunningSimulator, RateLimiter]:
    """A simulator and a limiter that both allow 20 submissions a second, for tests that send many."""
    sim = make_simulator(limits={FAMILY: FamilyLimits(submissions_per_second=20)}, **config)
    return sim, RateLimiter.with_overrides(submissions_per_second=20)


async def wait_final(client: DashScopeClient, task_id: str, timeout: float = 10.0) -> TaskResponse:
    with anyio.fail_after(timeout):
        while True:
            reply = await client.get_task(task_id)
            if reply.output.task_status.is_final:
                return reply
            await anyio.sleep(0.02)


@pytest.fixture
async def client(simulator: RunningSimulator) -> AsyncIterator[DashScopeClient]:
    async with connect(simulator) as c:
        yield c


def stats(sim: RunningSimulator) -> dict[str, Any]:
    return sim.state.stats()


# -- pure helpers ----------------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after() -> None:
    assert [backoff_delay(n, 0.5, 30, rand=lambda: 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n, 0.5, 30, rand=lambda: 0.0) for n in range(4)] == [0.25, 0.5, 1.0, 2.0]
    assert backoff_delay(20, 0.5, 30, rand=lambda: 1.0) == 30
    assert backoff_delay(0, 0.5, 30, retry_after=7) == 7
    assert backoff_delay(0, 0.5, 30, retry_after=600) == 30


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:05 GMT", now) == 5.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_replies_parse_as_documented() -> None:
    succeeded = TaskResponse.model_validate({
        "request_id": "r1",
        "output": {"task_id": "0385dc79-5ff8-4d82-bcb6-0000000000t1", "task_status": "SUCCEEDED",
                   "submit_time": "2025-07-27 21:05:15.212",
                   "video_url": "https://x/y.mp4", "orig_prompt": "a cat", "actual_prompt": "a white cat",
                   "something_new": 1},
        "usage": {"duration": 5, "video_count": 1, "SR": 1080},
    })  # fmt: skip
    assert succeeded.output.task_status.is_final and succeeded.output.video_url == "https://x/y.mp4"
    assert succeeded.output.model_extra == {"something_new": 1} and succeeded.usage == {
        "duration": 5, "video_count": 1, "SR": 1080
    }  # fmt: skip
    failed = TaskResponse.model_validate(
        {
            "request_id": "r2",
            "output": {
                "task_id": "0385dc79-5ff8-4d82-bcb6-0000000000t2",
                "task_status": "FAILED",
                "code": "InvalidParameter",
                "message": "The size is not match",
            },
        }
    )
    assert (failed.output.code, failed.usage) == ("InvalidParameter", None)
    assert not Status.PENDING.is_final and not Status.RUNNING.is_final and Status.UNKNOWN.is_final


async def test_the_key_stays_out_of_reprs_and_a_missing_key_sends_nothing(simulator: Any) -> None:
    async with DashScopeClient(SECRET, "http://127.0.0.1:9/api/v1") as c:
        assert SECRET not in repr(c) and SECRET not in str(c) and "127.0.0.1:9" in repr(c)
    async with DashScopeClient.from_settings(Settings(base_url=simulator.base_url)) as c:
        with pytest.raises(MissingApiKey, match="DASHSCOPE_API_KEY is not set"):
            await c.get_task("0000aaaa-1111")
    assert simulator.state.stats()["requests"] == []
    async with DashScopeClient.from_settings(Settings(api_key=SECRET, region="singapore")) as c:
        assert c.region == "singapore" and SECRET not in repr(c)


async def test_list_windows_are_checked_before_sending() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with DashScopeClient(SECRET, "http://127.0.0.1:9/api/v1", max_retries=0) as c:
        with pytest.raises(InvalidInput, match="24 hours"):
            await c.list_tasks(start_time=start, end_time=start + timedelta(hours=25))
        with pytest.raises(InvalidInput, match="before start_time"):
            await c.list_tasks(start_time=start, end_time=start - timedelta(seconds=1))
        with pytest.raises(InvalidInput, match="task_id"):
            await c.get_task(" ")


# -- the happy path --------------------------------------------------------------------------------


async def test_create_poll_download(simulator: RunningSimulator, client: DashScopeClient) -> None:
    created = await client.create_task(video(), IMAGE)
    task_id = created.output.task_id
    assert created.output.task_status == Status.PENDING and created.request_id
    assert await client.limiter.running(FAMILY) == 1 and await client.limiter.holders(FAMILY) == [task_id]
    done = await wait_final(client, task_id)
    assert done.output.task_status == Status.SUCCEEDED
    assert done.output.video_url and done.output.orig_prompt == "a cat runs on the grass"
    assert done.output.actual_prompt and done.usage and done.usage["video_count"] == 1
    assert await client.limiter.running(FAMILY) == 0  # freed by the final status
    async with httpx.AsyncClient() as http:
        mp4 = (await http.get(done.output.video_url)).raise_for_status().content
    assert mp4[4:8] == b"ftyp"
    # the simulator answers 403 to a create without X-DashScope-Async, so this one carried it
    assert stats(simulator)["creates_received"] == 1 and stats(simulator)["tasks_created"] == 1


async def test_failed_task_reports_its_code_and_frees_its_slot(
    simulator: RunningSimulator, client: DashScopeClient
) -> None:
    simulator.state.faults.add("create", "task_failed", code="DataInspectionFailed")
    task_id = (await client.create_task(video(), IMAGE)).output.task_id
    done = await wait_final(client, task_id)
    assert (done.output.task_status, done.output.code) == (Status.FAILED, "DataInspectionFailed")
    assert done.output.message and await client.limiter.running(FAMILY) == 0


async def test_unknown_task_id(client: DashScopeClient) -> None:
    reply = await client.get_task("0b3c5e0e-0000-4000-8000-000000000000")
    assert reply.output.task_status == Status.UNKNOWN


# -- errors DashScope reports ----------------------------------------------------------------------


async def test_wrong_key_is_a_401_with_the_region_hint(simulator: RunningSimulator) -> None:
    wrong = "sk-wrong-5e1d0b7a"
    async with connect(simulator, key=wrong) as c:
        with pytest.raises(DashScopeError) as caught:
            await c.get_task("t1")
        error = caught.value
        assert (error.code, error.status) == ("InvalidApiKey", 401) and error.request_id
        assert "WANX_REGION=singapore" in str(error) and wrong not in str(error)
        with pytest.raises(DashScopeError, match="InvalidApiKey"):
            await c.create_task(video(), IMAGE)
        assert await c.limiter.running(FAMILY) == 0
    assert stats(simulator)["status_gets"] == 1 and stats(simulator)["creates_received"] == 1  # no retries


async def test_invalid_parameter_is_not_retried_and_frees_the_slot(
    simulator: RunningSimulator, client: DashScopeClient
) -> None:
    with pytest.raises(DashScopeError) as caught:
        await client.create_task(video(), "ftp://example.com/cat.png")
    assert (caught.value.code, caught.value.status) == ("InvalidParameter", 400)
    assert "Fix the argument" in str(caught.value) and await client.limiter.running(FAMILY) == 0
    assert stats(simulator)["creates_received"] == 1 and stats(simulator)["tasks_created"] == 0


# -- retries ---------------------------------------------------------------------------------------


async def test_create_is_resent_only_after_answers_creating_nothing(make_simulator: MakeSimulator) -> None:
    sim, limiter = unpaced(make_simulator)
    sim.state.faults.add("create", "error", count=2)  # 500 InternalError, DashScope's JSON
    sim.state.faults.add("create", "error", status=429)
    sim.state.faults.add("create", "error", status=503, code="ServiceUnavailable")
    async with connect(sim, limiter=limiter) as c:
        created = await c.create_task(video(), IMAGE)
    assert created.output.task_status == Status.PENDING
    assert stats(sim)["creates_received"] == 5 and stats(sim)["tasks_created"] == 1
    assert await limiter.holders(FAMILY) == [created.output.task_id]


@pytest.mark.parametrize(
    ("kind", "options", "created"),
    [
        ("drop", {}, 0),  # connection cut mid-response
        ("html_502", {}, 0),  # a proxy's page: did DashScope get it?
        ("accept_then_drop", {}, 1),
        ("accept_then_hang", {"seconds": 5}, 1),  # read timeout
    ],
)
async def test_ambiguous_create_is_never_resent(
    simulator: RunningSimulator, kind: str, options: dict[str, Any], created: int
) -> None:
    simulator.state.faults.add("create", kind, **options)
    before = datetime.now(UTC)
    async with connect(simulator, timeout=0.5) as c:
        with pytest.raises(AmbiguousCreate) as caught:
            await c.create_task(video(), IMAGE)
        error = caught.value
        assert error.code == "AmbiguousCreate" and error.model == "wan2.2-i2v-flash"
        assert before <= error.sent_at <= datetime.now(UTC)
        assert "list_tasks" in str(error) and "wan2.2-i2v-flash" in str(error) and "Hint:" in str(error)
        assert stats(simulator)["creates_received"] == 1 and stats(simulator)["tasks_created"] == created
        assert await c.limiter.running(FAMILY) == 1  # held for a while: a task may be running
        orphans = await c.list_tasks(start_time=error.sent_at - timedelta(minutes=1), model_name=error.model)
        assert orphans.total == created
        assert list(stats(simulator)["tasks"]) == [item.task_id for item in orphans.data]


async def test_reads_retry_drops_proxies_errors_throttling_and_timeouts(simulator: RunningSimulator) -> None:
    faults = simulator.state.faults
    async with connect(simulator, timeout=0.5) as c:
        task_id = (await c.create_task(video(), IMAGE)).output.task_id
        for kind, options in [
            ("drop", {}),
            ("html_502", {}),
            ("error", {}),
            ("error", {"status": 429}),
            ("error", {"status": 504, "code": "GatewayTimeout"}),
            ("delay", {"seconds": 3}),  # read timeout
        ]:
            faults.add("get", kind, **options)
            assert (await c.get_task(task_id)).output.task_id == task_id
        assert stats(simulator)["status_gets"] == 12
        faults.add("list", "error", status=503)
        faults.add("list", "drop")
        assert (await c.list_tasks()).total == 1
        faults.add("cancel", "html_502")
        simulator.state.hold_pending = True
        task_id = (await c.create_task(video(), IMAGE)).output.task_id
        assert await c.cancel_task(task_id)
        assert stats(simulator)["cancels"] == 2


async def test_retries_give_up_with_the_last_error(simulator: RunningSimulator) -> None:
    simulator.state.faults.add("get", "error", count=3)
    async with connect(simulator, max_retries=2) as c:
        with pytest.raises(DashScopeError) as caught:
            await c.get_task("t1")
        assert (caught.value.code, caught.value.status) == ("InternalError", 500) and caught.value.retryable
        assert stats(simulator)["status_gets"] == 3
        simulator.state.faults.add("get", "html_502", count=3)
        with pytest.raises(DashScopeError) as caught:
            await c.get_task("t1")
        assert (caught.value.code, caught.value.status) == ("BadResponse", 502)
        assert "502 Bad Gateway" in caught.value.message and "<" not in caught.value.message


async def test_unreachable_server_is_a_connection_error_and_creates_retry() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limiter = RateLimiter.with_overrides(submissions_per_second=20)
    base_url = f"http://127.0.0.1:{port}/api/v1"
    async with DashScopeClient(SECRET, base_url, backoff=0.01, max_retries=2, limiter=limiter) as c:
        with pytest.raises(DashScopeError) as caught:
            await c.get_task("t1")
        assert caught.value.code == "ConnectionError" and caught.value.retryable
        with pytest.raises(DashScopeError) as caught:
            await c.create_task(video(), IMAGE)
        assert caught.value.code == "ConnectionError" and not isinstance(caught.value, AmbiguousCreate)
        assert await c.limiter.running(FAMILY) == 0 and SECRET not in str(caught.value)


# -- cancel and list -------------------------------------------------------------------------------


async def test_cancel_pending_and_not_running(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(hold_pending=True)
    async with connect(sim) as c:
        pending = (await c.create_task(video(), IMAGE)).output.task_id
        assert await c.cancel_task(pending)
        assert (await c.get_task(pending)).output.task_status == Status.CANCELED
        assert await c.limiter.running(FAMILY) == 0
        running = (await c.create_task(video(), IMAGE)).output.task_id
        sim.state.hold_pending = False
        with anyio.fail_after(5):
            while (await c.get_task(running)).output.task_status == Status.PENDING:
                await anyio.sleep(0.01)
        with pytest.raises(DashScopeError) as caught:
            await c.cancel_task(running)
        assert (caught.value.code, caught.value.status) == ("UnsupportedOperation", 400)
        assert "Only PENDING tasks" in str(caught.value)
    assert stats(sim)["cancels"] == 2  # the 400 was not retried


async def test_cancel_whose_answer_was_lost_still_succeeds(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(hold_pending=True)
    async with connect(sim, timeout=0.3, backoff=0.6, max_backoff=0.6) as c:
        task_id = (await c.create_task(video(), IMAGE)).output.task_id
        sim.state.faults.add("cancel", "delay", seconds=0.5)  # handled after the client gave up waiting
        assert await c.cancel_task(task_id)  # the retry meets UnsupportedOperation: already CANCELED
        assert (await c.get_task(task_id)).output.task_status == Status.CANCELED


async def test_list_tasks_filters_and_pages(make_simulator: MakeSimulator) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    sim, _ = unpaced(make_simulator)
    limiter = RateLimiter.with_overrides(submissions_per_second=20, running_tasks=3)
    async with connect(sim, limiter=limiter) as c:
        flash = [(await c.create_task(video(), IMAGE)).output.task_id for _ in range(2)]
        turbo = (await c.create_task(video("wanx2.1-i2v-turbo"), IMAGE)).output.task_id
        everything = await c.list_tasks(start_time=start, end_time=start + timedelta(hours=1))
        assert everything.total == 3 and {item.task_id for item in everything.data} == {*flash, turbo}
        assert everything.request_id and all(item.gmt_create for item in everything.data)
        only_turbo = await c.list_tasks(model_name="wanx2.1-i2v-turbo")
        assert [item.task_id for item in only_turbo.data] == [turbo]
        paged = await c.list_tasks(model_name="wan2.2-i2v-flash", page_size=1, page_no=2)
        assert (paged.total, paged.total_page, paged.page_no, len(paged.data)) == (2, 2, 2, 1)
        await wait_final(c, turbo)
        succeeded = await c.list_tasks(status=Status.SUCCEEDED, task_id=turbo)
        assert [item.task_id for item in succeeded.data] == [turbo]
        assert (await c.list_tasks(start_time=start + timedelta(hours=1))).total == 0


# -- rate limiting ---------------------------------------------------------------------------------




async def test_a_burst_queues_locally_without_429s_or_too_many_tasks(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(speed=1000, limits={FAMILY: FamilyLimits(submissions_per_second=5, running_tasks=2)})
    limiter = RateLimiter.with_overrides(submissions_per_second={FAMILY: 5}, running_tasks={FAMILY: 2})
    results: list[TaskResponse] = []
    seen: set[tuple[int, int]] = set()  # (running, queued) as the limiter reported them

    async def generate(c: DashScopeClient) -> None:
        created = await c.create_task(video(), IMAGE)
        results.append(await wait_final(c, created.output.task_id))

    async with connect(sim, limiter=limiter) as c, anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(generate, c)
        with anyio.fail_after(20):
            while len(results) < 10:
                seen.add((await limiter.running(FAMILY), await limiter.queued(FAMILY)))
                await anyio.sleep(0.005)
    assert [r.output.task_status for r in results] == [Status.SUCCEEDED] * 10
    assert max(running for running, _ in seen) == 2 and max(queued for _, queued in seen) >= 6
    report = stats(sim)
    assert report["creates_received"] == 10 and report["tasks_created"] == 10
    assert not [r for r in report["requests"] if r["status"] == 429]
    assert unfinished_overlap(list(report["tasks"].values())) <= 2
    assert await limiter.running(FAMILY) == 0 and await limiter.queued(FAMILY) == 0


async def test_a_waiting_create_refreshes_tasks_nobody_polls(simulator: RunningSimulator) -> None:
    limiter = RateLimiter.with_overrides(running_tasks=1, stale_after=0.3)
    async with connect(simulator, limiter=limiter) as c:
        first = (await c.create_task(video(), IMAGE)).output.task_id  # never polled by the caller
        with anyio.fail_after(5):
            second = (await c.create_task(video(), IMAGE)).output.task_id
        assert await limiter.holders(FAMILY) == [second]
    assert stats(simulator)["status_gets"] >= 1
    assert stats(simulator)["tasks"][first]["status"] == "SUCCEEDED"


async def test_a_cancelled_create_keeps_its_slot_only_if_it_was_sent(simulator: RunningSimulator) -> None:
    limiter = RateLimiter.with_overrides(submissions_per_second=1)
    simulator.state.faults.add("create", "delay", seconds=2)
    async with connect(simulator, limiter=limiter) as c:
        with anyio.move_on_after(0.3):
            await c.create_task(video(), IMAGE)  # sent, then given up on while DashScope is slow
        assert await limiter.running(FAMILY) == 1  # held: a task may exist
        with anyio.move_on_after(0.2):
            await c.create_task(video(), IMAGE)  # still waiting for the submission window: never sent
        assert await limiter.running(FAMILY) == 1 and await limiter.queued(FAMILY) == 0
    assert stats(simulator)["creates_received"] == 1


async def test_restarted_process_tracks_running_tasks(simulator: RunningSimulator) -> None:
    limiter = RateLimiter.with_overrides(running_tasks=1, stale_after=0.2)
    async with connect(simulator, limiter=limiter) as c:
        old = (await c.create_task(video(), IMAGE)).output.task_id
    fresh = RateLimiter.with_overrides(running_tasks=1, stale_after=0.2)
    await fresh.track(old, FAMILY)  # as the journal does after a restart
    async with connect(simulator, limiter=fresh) as c:
        assert await fresh.running(FAMILY) == 1
        await c.create_task(video(), IMAGE)  # waits for the tracked task to be seen finished
        assert old not in await fresh.holders(FAMILY)


# -- secrets ---------------------------------------------------------------------------------------


async def test_the_key_never_reaches_logs_or_errors(
    make_simulator: MakeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    sim, limiter = unpaced(make_simulator, api_keys={SECRET})
    caplog.set_level(logging.DEBUG)
    sim.state.faults.add("create", "error")
    sim.state.faults.add("get", "drop")
    async with connect(sim, timeout=0.5, limiter=limiter) as c:
        task_id = (await c.create_task(video(), IMAGE_DATA)).output.task_id
        await wait_final(c, task_id)
        sim.state.faults.add("create", "accept_then_drop")
        with pytest.raises(AmbiguousCreate) as caught:
            await c.create_task(video(), IMAGE_DATA)
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert "retry 1/4" in caplog.text and task_id in caplog.text
    assert SECRET not in caplog.text and IMAGE_DATA[-20:] not in caplog.text
