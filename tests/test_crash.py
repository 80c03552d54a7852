"""Crash recovery: SIGKILL the MCP server mid-flight, start it again, and nothing paid for is lost.

The simulator runs in this process (so the test can read its ground truth and inject faults); the server
is a separate ``wanx-mcp serve --transport http`` process pointed at it, as a user would run it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import support
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from wanx_mcp.catalog import WAN_25_26
from wanx_mcp.errors import WanxError
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import FamilyLimits, RunningSimulator
from wanx_mcp.simulator.app import sample_video
from wanx_mcp.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

MakeSimulator = Callable[..., RunningSimulator]
#: Simulated seconds per real second: a wan2.2-i2v-flash video (60 s) takes 1.2 s.
SPEED = 50.0


@contextmanager
def server_process(
    sim: RunningSimulator, data_dir: Path, allowed: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """``wanx-mcp serve --transport http`` against ``sim``, up and listening on ``port``."""
    env = support.isolated_env(allowed, **support.simulator_env(sim), WANX_DATA_DIR=str(data_dir),
                               WANX_POLL_INTERVAL="0.5")  # fmt: skip
    command = [*support.WANX, "serve", "--transport", "http", "--port", str(port)]
    with support.listening(command, env, port, allowed / "server.log") as process:
        yield process


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@asynccontextmanager
async def session(url: str) -> AsyncIterator[Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]]:
    """An MCP session over HTTP; yields ``call(tool, arguments)``, which returns the structured result."""
    http = httpx2.AsyncClient(timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:

        async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, result.content
            return dict(result.structured_content or {})

        yield call


def upstream(sim: RunningSimulator) -> dict[str, str]:
    return {task_id: record["status"] for task_id, record in sim.state.stats()["tasks"].items()}


async def test_sigkill_mid_flight_then_restart_loses_nothing(make_simulator: MakeSimulator, tmp_path: Path) -> None:
    # two running slots upstream for the wan2.5/2.6 family: its third and fourth tasks wait PENDING
    sim = make_simulator(speed=SPEED, limits={WAN_25_26.family: FamilyLimits(running_tasks=2)})
    image = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(image)
    data_dir, port = tmp_path / "data", support.free_port()
    videos = data_dir / "videos"
    url = f"http://127.0.0.1:{port}/mcp"
    sim.state.faults.add("download", "delay", seconds=60)  # the first download hangs until the crash

    with server_process(sim, data_dir, tmp_path, port) as first:
        async with session(url) as call:
            downloading = (await call("create_video_task", {"image": str(image), "resolution": "480P"}))["task_id"]
            wait_until(lambda: any(videos.glob(".*.part")), "the first video is being downloaded")
            running = {"image": str(image), "model": "wan2.6-i2v-flash", "duration": 8}  # 192 s: 3.8 s
            queued = running | {"duration": 2}  # 48 s: 1 s, once a running one is done
            others = [(await call("create_video_task", args))["task_id"] for args in (running, running, queued, queued)]
            at_kill = upstream(sim)
            first.send_signal(signal.SIGKILL)
            first.wait(10)

    # what the crash interrupted: a download, two generations, two tasks still queued
    assert at_kill[downloading] == "SUCCEEDED" and sim.state.stats()["downloads"] == 1
    assert [at_kill[task_id] for task_id in others] == ["RUNNING", "RUNNING", "PENDING", "PENDING"]
    assert any(videos.glob(".*.part")) and not any(videos.glob("*.mp4"))
    created = [downloading, *others]

    with server_process(sim, data_dir, tmp_path, port):
        async with session(url) as call:
            finals = [await call("get_task", {"task_id": task_id, "wait_seconds": 30}) for task_id in created]
            listed = await call("list_tasks", {"limit": 50})

    assert [task["status"] for task in finals] == ["SUCCEEDED"] * 5
    assert sorted(task["task_id"] for task in listed["tasks"]) == sorted(created)
    stats = sim.state.stats()
    assert stats["creates_received"] == stats["tasks_created"] == 5  # nothing re-submitted, nothing paid twice
    assert all(status == "SUCCEEDED" for status in upstream(sim).values())

    journal = SQLiteStore(data_dir / "journal.sqlite3")
    await journal.open()
    try:
        assert await journal.unfinished() == []  # the journal owes nothing: every task final and downloaded
        for task_id in created:
            task = await journal.get(task_id)
            assert task is not None and task.status == "SUCCEEDED" and task.video_path
            video = Path(task.video_path).read_bytes()
            assert len(video) == len(sample_video()) and video[4:8] == b"ftyp" and video == sample_video()
            assert [status for _, status in await journal.events(task_id)][-1] == "SUCCEEDED"
    finally:
        await journal.close()
    assert sorted(p.name for p in videos.glob("*.mp4")) == sorted(f"{task_id}.mp4" for task_id in created)
    assert not any(videos.glob(".*"))  # no .part left


@pytest.mark.slow
async def test_a_failed_journal_write_after_a_create_keeps_the_task_and_journals_it_later(
    make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    sim = make_simulator(speed=200.0)
    sim.state.faults.add("create", "accept_then_hang", seconds=1.0)  # time to make the journal unwritable
    image = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(image)
    settings = support.settings_for(sim, tmp_path)
    store = SQLiteStore(settings.journal_path, busy_timeout=0.2)  # a write that cannot go through fails fast
    await store.open()
    blocker = sqlite3.connect(settings.journal_path, isolation_level=None)
    results = []
    async with Wanx.open(settings, store=store) as wanx, Client(build_server(wanx)) as client:
        async with anyio.create_task_group() as group:

            async def create() -> None:
                results.append(await client.call_tool("create_video_task", {"image": str(image)}))

            group.start_soon(create)
            while sim.state.stats()["tasks_created"] == 0:
                await anyio.sleep(0.01)
            blocker.execute("BEGIN IMMEDIATE")  # from now on no write gets through (as on a full disk)
        (result,) = results
        (task_id,) = sim.state.stats()["tasks"]
        message = result.content[0].text
        assert result.is_error and f"JournalError: task {task_id} was created upstream" in message
        assert "Do not resubmit" in message
        assert await store.get(task_id) is None  # not journaled yet, but known: asking about it works
        kept = await client.call_tool("get_task", {"task_id": task_id})
        assert not kept.is_error and kept.structured_content["task_id"] == task_id
        blocker.rollback()  # space again: the task is journaled, followed and downloaded by itself
        with anyio.fail_after(30):
            while (saved := await store.get(task_id)) is None or not saved.video_path:
                await anyio.sleep(0.05)
        assert [s.outcome for s in await store.submissions()] == ["created"]
    blocker.close()
    assert Path(saved.video_path).read_bytes() == sample_video()
    assert sim.state.stats()["creates_received"] == 1


async def test_an_ambiguous_create_is_resolved_in_the_background_without_a_call(
    make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    sim = make_simulator(speed=200.0)
    sim.state.faults.add("create", "accept_then_drop")  # created upstream, the answer lost
    image = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(image)
    async with Wanx.open(support.settings_for(sim, tmp_path), client_options={"backoff": 0.01}) as wanx:
        with pytest.raises(WanxError, match="AmbiguousCreate"):
            await wanx.create({"image": str(image), "prompt": "an orphan"})
        (task_id,) = sim.state.stats()["tasks"]
        await wanx.recover()  # what the server's background loop does every RECOVER_EVERY seconds
        (submission,) = await wanx.store.submissions()
        assert (submission.outcome, submission.task_id) == ("recovered", task_id)
        done = await wanx.wait(task_id, 20)
    assert done.prompt == "an orphan" and done.video_path and Path(done.video_path).read_bytes() == sample_video()
    assert sim.state.stats()["creates_received"] == 1
