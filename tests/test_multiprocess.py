"""Several wanx-mcp processes on one data folder and one DashScope account behave as one server, on either store
backend (the ``backend`` fixture: the SQLite journal, or a real PostgreSQL server with ``WANX_DATABASE_URL``).

The slow tests use real processes (stdio MCP servers, the CLI, servers killed with SIGKILL) against the
simulator with its account-wide limits; what is checked is what DashScope and the user would see: the
simulator's request log (429s, who polled what, downloads), its task records (how many ran at once), the files
in the videos folder. The quick one opens two Wanx instances, each with its own store connection, in-process.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from PIL import Image
from support import WANX, isolated_env, settings_for, simulator_env, unfinished_overlap

from wanx_mcp.catalog import WAN_21_22
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import FamilyLimits, RunningSimulator
from wanx_mcp.simulator.app import sample_video
from wanx_mcp.store.base import TaskStore
from wanx_mcp.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio
MakeSimulator = Callable[..., RunningSimulator]
FAMILY = WAN_21_22.family
#: Simulated seconds per real second: a wan2.2-i2v-flash video (60 s) takes 1 s.
SPEED = 60.0
LEASE_TTL = "3"  # seconds: a killed holder's tasks are taken over within about this long


def env_for(tmp_path: Path, sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return isolated_env(tmp_path, **simulator_env(sim), WANX_POLL_INTERVAL="0.5", WANX_LEASE_TTL=LEASE_TTL, **extra)


def frame(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(path)
    return path


@asynccontextmanager
async def stdio_servers(env: dict[str, str], count: int) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            params = StdioServerParameters(command=WANX[0], args=[*WANX[1:], "serve"], env=env)
            clients.append(await stack.enter_async_context(Client(params)))
        yield clients




def agent_logged(requests: list[dict[str, Any]]) -> None:
    """Skip what follows unless the simulator logs each request's User-Agent (which names the process)."""
    if not requests or "agent" not in requests[0]:
        pytest.skip("this simulator does not log User-Agents: who polled what cannot be checked")


def pollers(requests: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Task id -> the User-Agents that asked for its status, in order, each run of one agent once."""
    seen: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        path = request["path"]
        if request["method"] == "GET" and "/tasks/" in path and not path.endswith("/tasks/"):
            task_id = path.rsplit("/", 1)[-1]
            agents = seen[task_id]
            if not agents or agents[-1] != request["agent"]:
                agents.append(request["agent"])
    return seen


def downloads(requests: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for request in requests:
        if request["path"].startswith("/results/") and request["status"] == 200:
            counts[request["path"].rsplit("/", 1)[-1].removesuffix(".mp4")] += 1
    return counts


async def journaled(data_dir: Path) -> SQLiteStore:
    store = SQLiteStore(data_dir / "journal.sqlite3")
    await store.open()
    return store


@dataclass(frozen=True)
class Backend:
    """Where the processes keep their shared store: ``env`` points them at it, ``open`` opens it here."""

    env: dict[str, str]
    open: Callable[[], Awaitable[TaskStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The SQLite journal in the data folder, or a PostgreSQL database (``pg_url``)."""
    if request.param == "sqlite":
        return Backend({}, lambda: journaled(tmp_path / "data"))
    url = request.getfixturevalue("pg_url")
    from wanx_mcp.store.postgres import PostgresStore

    async def open_postgres() -> TaskStore:
        store = PostgresStore(url)
        await store.open()
        return store

    return Backend({"WANX_DATABASE_URL": url}, open_postgres)


@pytest.mark.slow
async def test_three_servers_share_the_account_limits_and_the_work(
    make_simulator: MakeSimulator, tmp_path: Path, backend: Backend
) -> None:
    sim = make_simulator(speed=SPEED, limits={FAMILY: FamilyLimits(running_tasks=2)})
    image, env = frame(tmp_path), env_for(tmp_path, sim, **backend.env)
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    listing: list[subprocess.CompletedProcess[str]] = []

    async def generate(client: Client) -> None:
        result = await client.call_tool("generate_and_wait", {"image": str(image), "wait_seconds": 600})
        (errors if result.is_error else results).append(result.structured_content or {"error": str(result)})

    async with stdio_servers(env, 3) as clients, anyio.create_task_group() as group:
        for n in range(36):
            group.start_soon(generate, clients[n % 3])
        await anyio.sleep(3)  # mid-run, someone looks at the journal from the command line
        listing.append(await anyio.to_thread.run_sync(
            lambda: subprocess.run([*WANX, "tasks", "--json"], env=env, capture_output=True, text=True, timeout=60)
        ))  # fmt: skip

    assert errors == []
    assert len(results) == 36 and {task["status"] for task in results} == {"SUCCEEDED"}
    assert listing[0].returncode == 0, listing[0].stderr
    stats = sim.state.stats()
    requests = stats["requests"]
    assert not [r for r in requests if r["status"] == 429], "upstream 429s"
    assert stats["creates_received"] == stats["tasks_created"] == 36  # nothing sent twice
    assert unfinished_overlap(list(stats["tasks"].values())) <= 2
    task_ids = {task["task_id"] for task in results}
    assert set(stats["tasks"]) == task_ids
    assert downloads(requests) == dict.fromkeys(task_ids, 1)  # every video fetched exactly once
    videos = tmp_path / "data" / "videos"
    assert sorted(p.name for p in videos.glob("*.mp4")) == sorted(f"{t}.mp4" for t in task_ids)
    assert not any(videos.glob(".*"))  # no .part left
    store = await backend.open()
    try:
        assert await store.unfinished() == []
        assert {s.outcome for s in await store.submissions(limit=100)} == {"created"}
    finally:
        await store.close()
    agent_logged(requests)
    by_task = pollers(requests)
    assert {task_id: len(agents) for task_id, agents in by_task.items() if len(agents) > 1} == {}  # one poller each
    assert len({agents[0] for agents in by_task.values()}) == 3  # and the work spread over the three servers


def serve_http(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen([*WANX, "serve", "--transport", "http", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)  # fmt: skip


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await condition()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await anyio.sleep(0.1)
    return value


@pytest.mark.slow
async def test_the_lease_holder_is_killed_and_another_process_takes_over(
    make_simulator: MakeSimulator, tmp_path: Path, backend: Backend
) -> None:
    sim = make_simulator(speed=SPEED / 12)  # 12 s per video
    image, env = frame(tmp_path), env_for(tmp_path, sim, **backend.env)
    store = await backend.open()
    try:
        async with stdio_servers(env, 2) as (creator, other):
            created = []
            for _ in range(2):
                result = await creator.call_tool("create_video_task", {"image": str(image)})
                assert not result.is_error, result
                created.append(result.structured_content["task_id"])
            (holder,) = {lease.owner for lease in await store.leases(time.time())}  # the creator follows both
            assert {lease.task_id for lease in await store.leases(time.time())} == set(created)
            subprocess.run(["kill", "-9", holder.rsplit(":", 2)[1]], check=True)  # dies hard while they generate
            assert {t["status"] for t in sim.state.stats()["tasks"].values()} <= {"PENDING", "RUNNING"}
            for task_id in created:
                waited = await other.call_tool("get_task", {"task_id": task_id, "wait_seconds": 120})
                assert not waited.is_error, waited
            final = [await store.get(task_id) for task_id in created]
            survivors = {lease.owner for lease in await store.leases(time.time())}
    except BaseExceptionGroup as group:  # closing the killed server's pipes fails; nothing else may
        if not all(isinstance(exc, (BrokenPipeError, ConnectionError, OSError)) for exc in group.exceptions):
            raise
    finally:
        await store.close()
    assert [task.status for task in final] == ["SUCCEEDED"] * 2
    assert all(task.video_path and Path(task.video_path).read_bytes() == sample_video() for task in final)
    assert holder not in survivors
    requests = sim.state.stats()["requests"]
    assert downloads(requests) == dict.fromkeys(created, 1)
    assert sim.state.stats()["creates_received"] == 2
    agent_logged(requests)
    creator = f"(pid {holder.rsplit(':', 2)[1]})"
    for agents in pollers(requests).values():  # perhaps the creator, then only the survivor
        assert len(agents) <= 2 and creator not in agents[-1] and all(creator in agent for agent in agents[:-1])


@pytest.mark.slow
async def test_a_create_cut_off_by_kill_is_adopted_after_a_restart_without_any_call(
    make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    sim = make_simulator(speed=SPEED)
    sim.state.faults.add("create", "accept_then_hang", seconds=60)  # created upstream, the answer never comes
    image, env = frame(tmp_path), env_for(tmp_path, sim)
    data = tmp_path / "data"
    async with stdio_servers(env, 1) as (first,), anyio.create_task_group() as group:
        group.start_soon(first.call_tool, "create_video_task", {"image": str(image), "prompt": "a lost one"})
        await wait_until(lambda: _async(sim.state.stats()["tasks_created"] == 1), "the task exists upstream")
        store = await journaled(data)
        (sent,) = await store.submissions()
        assert sent.outcome == "sent"
        (owner,) = await store.live_owners(time.time())
        subprocess.run(["kill", "-9", owner.rsplit(":", 2)[1]], check=True)
        group.cancel_scope.cancel()
    (task_id,) = sim.state.stats()["tasks"]
    # a restarted server resolves it by itself: no tool is called
    async with stdio_servers(env, 1):
        saved = await wait_until(lambda: _saved(store, task_id), "the lost task is journaled and downloaded", 90)
    (recovered,) = await store.submissions()
    await store.close()
    assert (recovered.outcome, recovered.task_id) == ("recovered", task_id)
    assert saved.prompt == "a lost one" and Path(saved.video_path).read_bytes() == sample_video()
    assert sim.state.stats()["creates_received"] == 1


async def _async(value: Any) -> Any:
    return value


async def _saved(store: SQLiteStore, task_id: str) -> Any:
    task = await store.get(task_id)
    return task if task is not None and task.video_path else None


async def test_one_instance_creates_another_waits_and_neither_sweeps_the_others_download(
    make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    sim = make_simulator(speed=200.0)
    sim.state.faults.add("download", "delay", seconds=0.5)  # A's download is under way when B starts
    settings = settings_for(sim, tmp_path, poll_interval=0.5)
    videos = settings.videos_dir
    async with Wanx.open(settings) as a:
        task = await a.create({"image": str(frame(tmp_path))})
        while not any(videos.glob(".*.part")):
            await anyio.sleep(0.01)
        (part,) = videos.glob(".*.part")
        async with Wanx.open(settings) as b:  # a second process on the same data folder starts
            assert part.exists()  # it left A's running download alone
            done = await b.wait(task.task_id, 20)  # and is woken by what A records
            assert [listed.task_id for listed in await b.list()] == [task.task_id]
            b_polls = b.watcher.status_requests
    assert done.status == "SUCCEEDED" and Path(done.video_path).read_bytes() == sample_video()
    assert b_polls == 0 and a.watcher.status_requests > 0  # only the lease holder asked DashScope
    assert sim.state.stats()["downloads"] == 1 and not any(videos.glob(".*.part"))


@pytest.mark.slow
async def test_a_listener_on_one_process_hears_of_a_task_another_process_creates_and_finishes(
    make_simulator: MakeSimulator, tmp_path: Path, backend: Backend
) -> None:
    sim = make_simulator(speed=SPEED / 6)  # 6 s per video
    image, env = frame(tmp_path), env_for(tmp_path, sim, **backend.env)
    heard: list[str] = []

    async def collect(subscription: Any) -> None:
        async for event in subscription:
            heard.append(str(getattr(event, "uri", "")))

    async with stdio_servers(env, 2) as (creator, listener):
        everything = listener.listen(resource_subscriptions=["wanx://tasks"])
        async with everything as all_tasks, anyio.create_task_group() as group:
            group.start_soon(collect, all_tasks)
            created = await creator.call_tool("create_video_task", {"image": str(image)})
            assert not created.is_error, created
            task_id = created.structured_content["task_id"]
            await wait_until(lambda: _async("wanx://tasks" in heard), "the listener hears of the new task", 10)
            uri = f"wanx://tasks/{task_id}"
            async with listener.listen(resource_subscriptions=[uri]) as one:
                group.start_soon(collect, one)
                final = await creator.call_tool("get_task", {"task_id": task_id, "wait_seconds": 60})
                # the creation, then the task's later changes (some may be announced together): heard on the other
                await wait_until(lambda: _async(uri in heard and heard.count("wanx://tasks") >= 2),
                                 "the listener hears the task change", 10)  # fmt: skip
            group.cancel_scope.cancel()
        read = json.loads((await listener.read_resource(uri)).contents[0].text)
    assert not final.is_error and final.structured_content["status"] == "SUCCEEDED"
    assert read["video_path"] == final.structured_content["video_path"]
    assert set(heard) == {"wanx://tasks", uri}  # only what was listened for
    requests = sim.state.stats()["requests"]
    assert [len(agents) for agents in pollers(requests).values()] == [1]  # only the creator followed it
