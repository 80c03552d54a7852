"""HTTP replicas on one PostgreSQL behave as one server.

Each replica is a real ``wanx-mcp serve --transport http`` process with its own data folder, pointed at one
PostgreSQL server started by the tests (``pg_url``) and at one simulator in this process (its ground truth:
what was created, polled and downloaded). Agents talk to the replicas through the MCP SDK's ``Client``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from support import WANX, free_port, isolated_env, listening, simulator_env

from wanx_mcp.simulator import RunningSimulator
from wanx_mcp.simulator.app import sample_video

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MakeSimulator = Callable[..., RunningSimulator]
#: Simulated seconds per real second: a 5 s wan2.2-i2v-flash video (60 s) takes 3 s.
SPEED = 20.0


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str  # its MCP endpoint


@contextmanager
def replicas(sim: RunningSimulator, pg_url: str, tmp_path: Path, count: int, **env: str) -> Iterator[list[Replica]]:
    """``count`` replicas on ``pg_url``, started together, each with its data folder in ``tmp_path/replica-N`` and
    its stderr in ``replica-N.log``."""
    ports = [free_port() for _ in range(count)]

    def start(n: int) -> Replica:
        environment = isolated_env(
            tmp_path, **simulator_env(sim), WANX_DATABASE_URL=pg_url, WANX_DATA_DIR=str(tmp_path / f"replica-{n}"),
            WANX_POLL_INTERVAL="0.5", WANX_LOG_LEVEL="INFO", **env,
        )  # fmt: skip
        command = [*WANX, "serve", "--transport", "http", "--port", str(ports[n])]
        process = stack.enter_context(listening(command, environment, ports[n], tmp_path / f"replica-{n}.log"))
        return Replica(process, f"http://127.0.0.1:{ports[n]}/mcp")

    with ExitStack() as stack, ThreadPoolExecutor(count) as threads:
        yield list(threads.map(start, range(count)))


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client


async def call(client: Client, tool: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, **options)
    assert not result.is_error, result.content
    return dict(result.structured_content or {})


def logs(tmp_path: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(tmp_path.glob("replica-*.log")))


async def test_a_task_created_through_one_replica_is_listed_read_and_waited_for_through_another(
    make_simulator: MakeSimulator, pg_url: str, pg_server: Any, tmp_path: Path, image: Path
) -> None:
    sim = make_simulator(speed=SPEED)
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    with replicas(sim, pg_url, tmp_path, 2) as (a, b):
        async with connect(a.url) as agent_a, connect(b.url) as agent_b:
            created = await call(agent_a, "create_video_task", {"image": str(image), "prompt": "waves roll in"})
            task_id = created["task_id"]
            listed = await call(agent_b, "list_tasks", {})
            assert [task["task_id"] for task in listed["tasks"]] == [task_id]
            read = json.loads((await agent_b.read_resource(f"wanx://tasks/{task_id}")).contents[0].text)
            assert read["task_id"] == task_id and read["prompt"] == "waves roll in"
            assert read["status"] in ("PENDING", "RUNNING")
            final = await call(
                agent_b, "get_task", {"task_id": task_id, "wait_seconds": 30}, progress_callback=on_progress
            )
            video = (await agent_b.read_resource(f"wanx://tasks/{task_id}/video")).contents[0]
            again = await call(agent_a, "get_task", {"task_id": task_id})

    assert final["status"] == "SUCCEEDED"
    links = {name for name in final if name.endswith("_link")}  # each replica links to itself (no shared token)
    assert links and all(again[name] != final[name] for name in links)
    assert {k: v for k, v in again.items() if k not in links} == {k: v for k, v in final.items() if k not in links}
    saved = Path(final["video_path"])
    assert saved.read_bytes() == sample_video() and saved.parent.parent.name in ("replica-0", "replica-1")
    assert getattr(video, "blob", None)  # B serves the video whichever replica saved it (one machine here)
    assert progress and all(message for _, message in progress)  # B's caller saw the task move, though A polls
    stats = sim.state.stats()
    assert stats["creates_received"] == stats["tasks_created"] == 1 and stats["downloads"] == 1
    log_text = logs(tmp_path)
    assert pg_server.password not in log_text and "Traceback" not in log_text


async def test_a_killed_lease_holder_leaves_its_tasks_to_another_replica(
    make_simulator: MakeSimulator, pg_url: str, tmp_path: Path, image: Path
) -> None:
    sim = make_simulator(speed=SPEED)
    with replicas(sim, pg_url, tmp_path, 2, WANX_LEASE_TTL="2") as (a, b):
        async with connect(a.url) as agent_a:
            created = [
                (await call(agent_a, "create_video_task", {"image": str(image), "resolution": "480P"}))["task_id"]
                for _ in range(2)
            ]
        a.process.send_signal(signal.SIGKILL)  # while both tasks run upstream, followed by A alone
        a.process.wait(10)
        assert sim.state.stats()["downloads"] == 0
        async with connect(b.url) as agent_b:
            finals = [await call(agent_b, "get_task", {"task_id": task_id, "wait_seconds": 30}) for task_id in created]

    assert [task["status"] for task in finals] == ["SUCCEEDED"] * 2
    for task in finals:
        saved = Path(task["video_path"])
        assert saved.parent.parent.name == "replica-1" and saved.read_bytes() == sample_video()
    stats = sim.state.stats()
    assert stats["creates_received"] == stats["tasks_created"] == 2 and stats["downloads"] == 2

