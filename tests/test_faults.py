"""The fault matrix: what an agent sees through the MCP tools when DashScope, the network or the disk misbehave.

Every test runs the real stack (MCP server in memory, Wanx, watcher, DashScopeClient) against the simulator
over loopback HTTP, injects a fault with ``simulator.state.faults.add(...)``, and asserts both the agent's
view (tool results) and the ground truth (the simulator's counts, the journal, the files on disk).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import support
from mcp import Client

from wanx_mcp import watcher
from wanx_mcp.config import Settings
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.request import build_request
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator, SimulatorConfig, running_simulator
from wanx_mcp.simulator.app import sample_video
from wanx_mcp.tasks import parse_iso

pytestmark = pytest.mark.anyio

MakeSimulator = Callable[..., RunningSimulator]
#: A client that gives up on an answer after 0.5 s and retries at once, so timeouts cost little test time.
QUICK_CLIENT: dict[str, Any] = {"timeout": 0.5, "backoff": 0.02, "max_backoff": 0.1}


def settings_for(sim: RunningSimulator, tmp_path: Path, **changes: Any) -> Settings:
    return support.settings_for(sim, tmp_path, poll_interval=0.3, **changes)


@asynccontextmanager
async def serving(settings: Settings, **client_options: Any) -> AsyncIterator[tuple[Wanx, Client]]:
    """Wanx on ``settings`` with a quick client, and an MCP client session on it."""
    async with (
        Wanx.open(settings, client_options=QUICK_CLIENT | client_options) as wanx,
        Client(build_server(wanx)) as client,
    ):
        yield wanx, client


@pytest.fixture
def quick_download_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Download retries 0.01, 0.02, 0.04... s apart (at most 0.1 s) instead of 2, 4, 8... s (at most 60)."""
    monkeypatch.setattr(watcher, "DOWNLOAD_BACKOFF", 0.01)
    monkeypatch.setattr(watcher, "DOWNLOAD_MAX_BACKOFF", 0.1)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def complete_video(path: str | None) -> bool:
    return path is not None and Path(path).read_bytes() == sample_video()


def leftovers(settings: Settings) -> list[Path]:
    return sorted(settings.videos_dir.glob(".*.part")) if settings.videos_dir.is_dir() else []


def statuses(sim: RunningSimulator, path_part: str) -> list[int | str]:
    return [r["status"] for r in sim.state.stats()["requests"] if path_part in r["path"]]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


# -- create ------------------------------------------------------------------------------------------------


async def test_create_5xx_and_429_are_retried_into_exactly_one_task(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    faults = simulator.state.faults
    faults.add("create", "error", status=500)
    faults.add("create", "error", status=503, code="ServiceUnavailable")
    faults.add("create", "error", status=429)
    settings = settings_for(simulator, tmp_path)
    unpaced = RateLimiter.with_overrides(submissions_per_second=20)  # retries at once, not 2 a second
    async with serving(settings, limiter=unpaced) as (wanx, client):
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
        submissions = await wanx.store.submissions()
    assert not result.is_error, text_of(result)
    assert result.structured_content["status"] == "SUCCEEDED"
    assert complete_video(result.structured_content["video_path"])
    stats = simulator.state.stats()
    assert statuses(simulator, "video-synthesis") == [500, 503, 429, 200]
    assert stats["creates_received"] == 4 and stats["tasks_created"] == 1
    assert [(s.outcome, s.task_id) for s in submissions] == [("created", result.structured_content["task_id"])]


@pytest.mark.parametrize(
    ("kind", "options", "created"),
    [
        ("accept_then_drop", {}, 1),  # DashScope created the task; the answer was cut half-way
        ("accept_then_hang", {"seconds": 5}, 1),  # ...the answer never came within the client's timeout
        ("delay", {"seconds": 5}, 1),  # DashScope was slow: it creates the task after the client gave up
        ("drop", {}, 0),  # the connection broke: did the request get through? (here: no)
    ],
)
async def test_lost_create_answer_is_ambiguous_never_resent_and_findable(
    simulator: RunningSimulator, tmp_path: Path, image: Path, kind: str, options: dict[str, Any], created: int
) -> None:
    simulator.state.faults.add("create", kind, **options)
    settings = settings_for(simulator, tmp_path)
    before = datetime.now(UTC).replace(microsecond=0)
    async with serving(settings) as (wanx, client):
        result = await client.call_tool("create_video_task", {"image": str(image), "prompt": "a paid task"})
        # the slow create lands once the simulator sees the client gone
        await until(lambda: simulator.state.stats()["tasks_created"] >= created)
        await anyio.sleep(0.2)  # room for a (wrong) re-send
        assert simulator.state.stats()["creates_received"] == 1  # never re-sent
        assert simulator.state.stats()["tasks_created"] == created

        # the agent is told what happened, when, and exactly how to look for the task
        message = text_of(result)
        assert result.is_error and "AmbiguousCreate" in message and "Hint:" in message
        sent = re.search(r"was sent at (\S+ \S+) UTC", message)
        assert sent and before <= datetime.fromisoformat(sent[1]).replace(tzinfo=UTC) <= datetime.now(UTC)
        advice = re.search(r"list_tasks\(start_time='([^']+)', model_name='([^']+)'\)", message)
        assert advice and advice[2] == "wan2.2-i2v-flash"

        # the journal remembers the submission, so the orphan can be found even after a restart
        (row,) = await wanx.store.submissions()
        assert (row.outcome, row.model, row.task_id) == ("ambiguous", "wan2.2-i2v-flash", None)
        sent_at = parse_iso(row.sent_at)
        assert sent_at is not None and before <= sent_at
        orphans = await wanx.client.list_tasks(start_time=sent_at - timedelta(minutes=1), model_name=row.model)
        assert [item.task_id for item in orphans.data] == list(simulator.state.stats()["tasks"])
        assert orphans.total == created

        # following the advice through MCP finds the task, which is then journaled, followed and downloaded
        found = await client.call_tool("list_tasks", {"start_time": advice[1], "model_name": advice[2]})
        assert not found.is_error, text_of(found)
        tasks = found.structured_content["tasks"]
        assert [t["task_id"] for t in tasks] == list(simulator.state.stats()["tasks"])
        if created:
            assert tasks[0]["prompt"] == "a paid task" and "submission was lost" in " ".join(tasks[0]["notes"])
            done = await client.call_tool("get_task", {"task_id": tasks[0]["task_id"], "wait_seconds": 20})
            assert done.structured_content["status"] == "SUCCEEDED"
            assert complete_video(done.structured_content["video_path"])
            (row,) = await wanx.store.submissions()
            assert (row.outcome, row.task_id) == ("recovered", tasks[0]["task_id"])
        else:
            assert await wanx.store.submissions(outcome="ambiguous")  # still unresolved: nothing was created
    assert simulator.state.stats()["creates_received"] == 1


async def test_other_tasks_of_the_account_are_listed_but_never_adopted(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    simulator.state.faults.add("create", "drop")  # an ambiguous flash submission that created nothing
    async with serving(settings_for(simulator, tmp_path)) as (wanx, client):
        assert "AmbiguousCreate" in text_of(await client.call_tool("create_video_task", {"image": str(image)}))
        request = build_request({"image": "https://example.com/cat.png", "model": "wan2.2-i2v-plus"})
        foreign = (await wanx.client.create_task(request, "https://example.com/cat.png")).output.task_id  # another app
        found = await client.call_tool("list_tasks", {"model_name": "wan2.2-i2v-plus"})
        (task,) = found.structured_content["tasks"]
        assert task["task_id"] == foreign and "not created through this server" in " ".join(task["notes"])
        assert await wanx.store.get(foreign) is None and not wanx.watcher.is_following(foreign)
        assert [s.outcome for s in await wanx.store.submissions()] == ["ambiguous"]  # still unmatched
        bad = await client.call_tool("list_tasks", {"start_time": "yesterday"})
        assert bad.is_error and "InvalidInput: start_time='yesterday'" in text_of(bad)


# -- status checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "seen"),
    [
        ("drop", {}, "dropped"),  # connection cut mid-answer
        ("html_502", {}, 502),  # a proxy's HTML page instead of JSON
        ("error", {"status": 500}, 500),
        ("error", {"status": 429}, 429),
        ("delay", {"seconds": 2}, None),  # longer than the client's 0.5 s timeout
    ],
)
async def test_status_check_failures_do_not_stop_the_watcher(
    simulator: RunningSimulator, tmp_path: Path, image: Path, kind: str, options: dict[str, Any], seen: Any
) -> None:
    settings = settings_for(simulator, tmp_path)
    # no retries inside the client: each fault makes one status check fail, which the watcher rides out
    async with serving(settings, max_retries=0) as (_, client):
        simulator.state.faults.add("get", kind, count=2, **options)
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
    assert not result.is_error, text_of(result)
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and complete_video(task["video_path"])
    assert simulator.state.faults.pending() == []  # every injected fault was hit
    checks = statuses(simulator, f"/tasks/{task['task_id']}")
    if seen is not None:
        assert checks.count(seen) == 2
    assert len(checks) >= 3 and checks[-1] == 200


# -- downloads and the disk --------------------------------------------------------------------------------


async def test_truncated_download_is_retried_and_never_partial_at_the_final_path(
    simulator: RunningSimulator, tmp_path: Path, image: Path, quick_download_retries: None
) -> None:
    simulator.state.faults.add("download", "truncate", count=2)
    settings = settings_for(simulator, tmp_path)
    seen_sizes: set[int] = set()

    async def watch_final_paths() -> None:
        while True:
            for video in settings.videos_dir.glob("*.mp4") if settings.videos_dir.is_dir() else ():
                seen_sizes.add(video.stat().st_size)
            await anyio.sleep(0.002)

    async with serving(settings) as (_, client), anyio.create_task_group() as group:
        group.start_soon(watch_final_paths)
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
        group.cancel_scope.cancel()
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and complete_video(task["video_path"])
    assert simulator.state.stats()["downloads"] == 3
    assert seen_sizes <= {len(sample_video())}  # whenever it existed, the final path held the whole video
    assert leftovers(settings) == []
    with sqlite3.connect(settings.journal_path) as db:
        attempts, error = db.execute("SELECT download_attempts, download_error FROM tasks").fetchone()
    assert attempts == 2 and f"expected {len(sample_video())}" in error  # cut half-way, twice


async def test_videos_dir_unwritable_is_explained_and_recovers_once_fixed(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    settings = settings_for(simulator, tmp_path)
    settings.data_dir.mkdir(parents=True)
    settings.videos_dir.write_text("a file where the videos folder should be")  # root ignores chmod; this not
    async with serving(settings) as (_, client):
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
        assert not result.is_error, text_of(result)
        task = result.structured_content
        assert task["status"] == "SUCCEEDED" and task["video_path"] is None
        note = " ".join(task["notes"])
        assert "download failed: DownloadFailed: cannot write" in note and str(settings.videos_dir) in note
        assert "download the video from video_url" in task["hint"] and task["video_url"]
        assert not (await client.call_tool("list_models", {})).is_error  # still serving

        settings.videos_dir.unlink()  # the user fixes the disk; asking again fetches the video
        again = await client.call_tool("get_task", {"task_id": task["task_id"], "wait_seconds": 10})
    assert complete_video(again.structured_content["video_path"])


async def test_disk_full_is_explained_retried_and_saved_once_space_returns(
    simulator: RunningSimulator,
    tmp_path: Path,
    image: Path,
    quick_download_retries: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    settings = settings_for(simulator, tmp_path, wait_seconds=1.0)
    async with serving(settings) as (wanx, client):
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", full)  # every write of the video "fills the disk"
            created = await client.call_tool("create_video_task", {"image": str(image), "resolution": "480P"})
            task_id = created.structured_content["task_id"]
            await until(lambda: simulator.state.stats()["downloads"] > watcher.DOWNLOAD_ATTEMPTS)
            result = await client.call_tool("get_task", {"task_id": task_id})
            task = result.structured_content
            assert task["status"] == "SUCCEEDED" and task["video_path"] is None
            note = " ".join(task["notes"])
            assert "download failed: DownloadFailed: disk full" in note and "retrying until the link expires" in note
            assert "download the video from video_url" in task["hint"]
            # nothing at the final path (a retry may have its own .part open right now)
            assert [p for p in settings.videos_dir.iterdir() if not p.name.endswith(".part")] == []
        # space comes back: the watcher, still retrying, saves the video without being asked
        await until(lambda: wanx.watcher.is_following(task_id) is False)
        done = await client.call_tool("get_task", {"task_id": task_id})
    assert complete_video(done.structured_content["video_path"])
    assert list(settings.videos_dir.glob(".*.part")) == []  # no failed attempt left anything behind
    assert not any("download failed" in n for n in done.structured_content["notes"])  # no stale warning


async def test_video_host_down_longer_than_the_retries_still_ends_with_the_video(
    simulator: RunningSimulator, tmp_path: Path, image: Path, quick_download_retries: None
) -> None:
    outage = 2 * watcher.DOWNLOAD_ATTEMPTS  # more failed downloads in a row than ever announced
    simulator.state.faults.add("download", "error", status=503, count=outage)
    settings = settings_for(simulator, tmp_path, wait_seconds=1.0)
    async with serving(settings) as (wanx, client):
        created = await client.call_tool("create_video_task", {"image": str(image), "resolution": "480P"})
        task_id = created.structured_content["task_id"]
        await until(lambda: wanx.watcher.is_following(task_id) is False)  # done: nobody had to ask again
        done = (await client.call_tool("get_task", {"task_id": task_id})).structured_content
    assert simulator.state.stats()["downloads"] == outage + 1
    assert complete_video(done["video_path"]) and not any("download failed" in n for n in done["notes"])


def test_data_dir_under_a_file_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env |= {"WANX_DATA_DIR": str(blocker / "data"), "WANX_SIMULATE": "1"}
    command = [sys.executable, "-m", "wanx_mcp"]  # the stdio server, as an MCP client launches it
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "JournalError: cannot open the task journal" in done.stderr and str(blocker) in done.stderr
    assert "Traceback" not in done.stderr


# -- task outcomes and outages -----------------------------------------------------------------------------


async def test_moderation_failure_gives_the_agent_the_code_and_a_hint(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    simulator.state.faults.add("create", "task_failed", code="DataInspectionFailed")
    async with serving(settings_for(simulator, tmp_path)) as (_, client):
        result = await client.call_tool("generate_and_wait", {"image": str(image), "prompt": "a cat"})
    assert not result.is_error  # the call worked; the task failed
    task = result.structured_content
    assert (task["status"], task["error_code"]) == ("FAILED", "DataInspectionFailed")
    assert task["error_message"] and "moderation" in task["hint"] and "not billed" in task["hint"]
    assert task["video_path"] is None and simulator.state.stats()["downloads"] == 0


async def test_dashscope_outage_then_return_and_the_task_completes(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DashScope unreachable for a simulated minute: at speed 30, 2 s of real time are 60 s of DashScope's.

    The simulator's clock keeps running while it is down (as DashScope keeps generating while the network
    is out), so the task finishes during the outage; the watcher keeps retrying and picks it up on return.
    """
    config = SimulatorConfig(speed=30.0, jitter=False, render=False)
    with ExitStack() as outage:
        first = outage.enter_context(running_simulator(config))
        port = int(first.root_url.rsplit(":", 1)[1])
        settings = settings_for(first, tmp_path)
        async with serving(settings) as (wanx, client):
            created = await client.call_tool("create_video_task", {"image": str(image)})  # 60 s -> 2 s
            task_id = created.structured_content["task_id"]
            outage.close()  # DashScope goes away
            down_since = anyio.current_time()
            during = await client.call_tool("get_task", {"task_id": task_id})
            assert not during.is_error and during.structured_content["status"] in ("PENDING", "RUNNING")
            assert "get_task" in during.structured_content["hint"]
            await anyio.sleep(2 - (anyio.current_time() - down_since))
            assert first.state.stats()["tasks"][task_id]["status"] == "SUCCEEDED"  # done upstream meanwhile
            assert (await wanx.store.get(task_id)).status != "SUCCEEDED"  # type: ignore[union-attr]
            assert f"status check of {task_id} failed (ConnectionError)" in caplog.text  # the watcher kept trying
            with running_simulator(state=first.state, port=port) as back:  # and comes back, tasks intact
                done = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 20})
                assert back.base_url == first.base_url
    task = done.structured_content
    assert task["status"] == "SUCCEEDED" and complete_video(task["video_path"])
    assert first.state.stats()["tasks_created"] == 1
