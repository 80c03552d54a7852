"""Load over streamable HTTP: ``wanx-mcp serve --transport http`` as a subprocess against an in-test simulator.

Many MCP sessions call tools at once; the simulator keeps DashScope's submission rate (2/s for wan2.1/2.2)
but lets any number of tasks run, so only the server's own limiter keeps running tasks at the family's limit.
The server's peak RSS (VmHWM) is printed and recorded as a test property.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from PIL import Image
from support import WANX, free_port, isolated_env, listening, max_overlap, simulator_env

from wanx_mcp.catalog import get_model, rate_limits
from wanx_mcp.simulator import FamilyLimits, RunningSimulator

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MIXED_CALLS = 200
BURST = 50
SESSIONS = 20
CALL_TIMEOUT = 240.0
#: Simulated generation is this many times faster than DashScope: a 60 s flash video takes 0.1 s.
SPEED = 600.0
#: For the burst: a flash video takes 1.5 s, longer than the 1.1 s in which two more may be submitted, so
#: without the running-task limit three or more would run at once.
BURST_SPEED = 40.0
RSS_CAP_MB = 500
BURST_MODEL = "wan2.2-i2v-flash"
#: Log lines that must never appear in the server's stderr.
FORBIDDEN = ("database is locked", "Traceback", "unexpected exception", "Throttling", "JournalError")


@dataclass
class Served:
    """The server subprocess, the simulator it talks to, and every request that simulator answered."""

    url: str
    process: subprocess.Popen[bytes]
    stderr: Path
    simulator: RunningSimulator
    requests: list[dict[str, Any]]

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 1280x720 JPEG of noise (about 1 MB): every create carries it as a base64 data URI."""
    path = tmp_path / "noise.jpg"
    noise = random.Random(7).randbytes(1280 * 720 * 3)
    Image.frombytes("RGB", (1280, 720), noise).save(path, quality=90)
    return path


@contextmanager
def serving(tmp_path: Path, simulator: RunningSimulator) -> Iterator[Served]:
    """``wanx-mcp serve --transport http`` pointed at ``simulator``, until the block ends."""
    requests: list[dict[str, Any]] = []
    log_request = simulator.state.log_request

    def spy(method: str, path: str, status: int | str) -> None:  # the simulator keeps only the latest 1000
        requests.append({"method": method, "path": path, "status": status})
        log_request(method, path, status)

    simulator.state.log_request = spy  # type: ignore[method-assign]
    port = free_port()
    env = isolated_env(tmp_path, **simulator_env(simulator), WANX_LOG_LEVEL="INFO")
    command = [*WANX, "serve", "--transport", "http", "--port", str(port)]
    stderr = tmp_path / "server.log"
    with listening(command, env, port, stderr) as process:
        yield Served(f"http://127.0.0.1:{port}/mcp", process, stderr, simulator, requests)


def unbounded_simulator(make_simulator: Callable[..., RunningSimulator], speed: float) -> RunningSimulator:
    """A simulator at ``speed`` with DashScope's submission rates but room for any number of running tasks."""
    room = FamilyLimits(running_tasks=BURST * 2)
    return make_simulator(speed=speed, limits=dict.fromkeys(rate_limits(), room))


@asynccontextmanager
async def sessions(url: str, count: int) -> AsyncIterator[list[Client]]:
    """``count`` MCP sessions to ``url``, each on its own HTTP connection pool."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            http = await stack.enter_async_context(httpx2.AsyncClient(timeout=CALL_TIMEOUT))
            clients.append(await stack.enter_async_context(Client(streamable_http_client(url, http_client=http))))
        yield clients


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def call_all(calls: list[tuple[Client, str, dict[str, Any]]]) -> list[CallToolResult]:
    """Make every call at once; each must finish within CALL_TIMEOUT."""
    results: list[CallToolResult | None] = [None] * len(calls)

    async def one(index: int, client: Client, tool: str, arguments: dict[str, Any]) -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            results[index] = await client.call_tool(tool, arguments)

    async with anyio.create_task_group() as group:
        for index, (client, tool, arguments) in enumerate(calls):
            group.start_soon(one, index, client, tool, arguments)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def check_log(served: Served) -> None:
    """The server is still up and logged no crash, lock contention or throttling."""
    assert served.process.poll() is None, "the server exited"
    log = served.log()
    for needle in FORBIDDEN:
        assert needle not in log, f"server stderr has {needle!r}:\n{log[-3000:]}"


def report_rss(served: Served, record_property: Callable[[str, object], None]) -> float:
    peak = served.peak_rss_mb()
    record_property("server_peak_rss_mb", round(peak, 1))
    print(f"server peak RSS (VmHWM): {peak:.1f} MB")
    return peak


async def test_200_concurrent_mixed_calls_all_succeed(
    tmp_path: Path,
    make_simulator: Callable[..., RunningSimulator],
    image: Path,
    record_property: Callable[[str, object], None],
) -> None:
    with serving(tmp_path, unbounded_simulator(make_simulator, SPEED)) as served:
        await mixed_calls(served, image, record_property)


async def mixed_calls(served: Served, image: Path, record_property: Callable[[str, object], None]) -> None:
    started = time.monotonic()
    async with sessions(served.url, SESSIONS) as clients:
        seeds = await call_all([(clients[0], "create_video_task", {"image": str(image)}) for _ in range(2)])
        task_ids = [result.structured_content["task_id"] for result in seeds if result.structured_content]
        calls: list[tuple[Client, str, dict[str, Any]]] = []
        for index in range(MIXED_CALLS):
            client = clients[index % SESSIONS]
            kind = index % 10
            if kind < 2:  # 40 creates, over both rate-limit families
                model = BURST_MODEL if index % 20 < 10 else "wan2.5-i2v-preview"
                calls.append((client, "create_video_task", {"image": str(image), "model": model, "prompt": "rain"}))
            elif kind < 6:
                wait = 2 if kind == 5 else 0
                calls.append((client, "get_task", {"task_id": task_ids[index % 2], "wait_seconds": wait}))
            else:
                status = [None, "SUCCEEDED", "PENDING", None][kind - 6]
                calls.append((client, "list_tasks", {"status": status, "limit": 50}))
        results = await call_all(calls)
        elapsed = time.monotonic() - started
        journal = await clients[0].call_tool("list_tasks", {"limit": 500})
    errors = [
        (tool, text_of(result)[:300]) for (_, tool, _), result in zip(calls, results, strict=True) if result.is_error
    ]
    assert not errors, errors
    for (_, tool, _), result in zip(calls, results, strict=True):
        content = result.structured_content
        assert content is not None
        if tool == "list_tasks":
            assert isinstance(content["tasks"], list)
        else:
            assert content["status"] in {"PENDING", "RUNNING", "SUCCEEDED"}, content
    created = [
        r.structured_content["task_id"] for (_, t, _), r in zip(calls, results, strict=True) if t == "create_video_task"
    ]
    assert len(set(created)) == MIXED_CALLS // 5
    assert journal.structured_content is not None
    assert {t["task_id"] for t in journal.structured_content["tasks"]} == {*created, *task_ids}, "journal lost tasks"
    stats = served.simulator.state.stats()
    assert stats["creates_received"] == len(created) + 2, "a create was sent more than once"
    assert not [r for r in served.requests if r["status"] == 429], "the simulator answered 429"
    check_log(served)
    peak = report_rss(served, record_property)
    print(f"{MIXED_CALLS} mixed calls over {SESSIONS} sessions in {elapsed:.1f} s")
    assert peak < RSS_CAP_MB


async def test_50_simultaneous_creates_queue_locally_without_429(
    tmp_path: Path,
    make_simulator: Callable[..., RunningSimulator],
    image: Path,
    record_property: Callable[[str, object], None],
) -> None:
    with serving(tmp_path, unbounded_simulator(make_simulator, BURST_SPEED)) as served:
        await burst(served, image, record_property)


async def burst(served: Served, image: Path, record_property: Callable[[str, object], None]) -> None:
    limit = get_model(BURST_MODEL).rate_limit
    started = time.monotonic()
    async with sessions(served.url, SESSIONS) as clients:
        calls = [
            (clients[index % SESSIONS], "create_video_task", {"image": str(image), "prompt": f"wave {index}"})
            for index in range(BURST)
        ]
        results = await call_all(calls)
    elapsed = time.monotonic() - started
    errors = [text_of(result)[:300] for result in results if result.is_error]
    assert not errors, errors
    task_ids = {result.structured_content["task_id"] for result in results if result.structured_content}
    assert len(task_ids) == BURST

    deadline = time.monotonic() + 60
    while True:  # let the last ones end, so every task's whole life is in the records
        tasks = served.simulator.state.stats()["tasks"]
        if all(tasks[task_id]["ended_at"] is not None for task_id in task_ids):
            break
        assert time.monotonic() < deadline, "the burst's tasks did not all end"
        await anyio.sleep(0.2)
    stats = served.simulator.state.stats()
    records = [stats["tasks"][task_id] for task_id in task_ids]
    running = max_overlap([(r["started_at"], r["ended_at"]) for r in records])
    in_flight = max_overlap([(r["created_at"], r["ended_at"]) for r in records])
    throttled = [r for r in served.requests if r["status"] == 429]
    peak = report_rss(served, record_property)
    print(
        f"{BURST} creates in {elapsed:.1f} s: at most {running} running and {in_flight} submitted but unfinished "
        f"at once; {len(throttled)} answered 429; {stats['creates_received']} creates received"
    )
    assert running <= limit.running_tasks
    assert in_flight <= limit.running_tasks
    assert not throttled, f"the simulator answered 429 {len(throttled)} times"
    assert stats["creates_received"] == stats["tasks_created"] == BURST
    assert all(record["model"] == BURST_MODEL and record["status"] == "SUCCEEDED" for record in records)
    check_log(served)
    assert peak < RSS_CAP_MB
