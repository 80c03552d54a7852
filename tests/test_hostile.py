"""A hostile DashScope: task ids that are paths, answers echoing the Authorization header, signed links.

The stand-in is a small Starlette app served by uvicorn over real loopback HTTP; the client, the service and
the MCP server under test are the real ones.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
import pytest
import support
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wanx_mcp.config import Settings
from wanx_mcp.dashscope import AmbiguousCreate, DashScopeClient
from wanx_mcp.errors import DashScopeError
from wanx_mcp.request import build_request
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator
from wanx_mcp.simulator.app import sample_video
from wanx_mcp.store import open_store
from wanx_mcp.tasks import Status, Task, iso, utcnow

pytestmark = pytest.mark.anyio

API_KEY = "sk-hostile-ECHOCHECK-5a1f0c3e9b7d2864"
SIGNATURE = "SIGxHOSTILExSIGNATUREx0123456789"
QUICK: dict[str, Any] = {"timeout": 2.0, "backoff": 0.02, "max_backoff": 0.1}
EVIL_IDS = [
    "../../outside/x",
    "/tmp/holiday",
    "..",
    "a/b/c-1234567",
    "abc",
    "x" * 200,
    "ok-12345678\n",
    "%2e%2e%2fx123",
]
DEBUG_LOGGERS = ("", "wanx_mcp", "mcp", "httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")


@dataclass
class Hostile:
    """What the stand-in answers: ``create_id`` for creates (None: a fresh UUID), echoes of the auth header."""

    root: str = ""
    create_id: str | None = None
    status_id: str | None = None  # the task id status answers give, instead of the one asked about
    listed_ids: list[str] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> the prompt it was created with
    requests: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def create(request: Request) -> Response:
            self.requests.append(f"POST {request.url.path}")
            body = await request.json()
            task_id = self.create_id if self.create_id is not None else str(uuid.uuid4())
            self.tasks[task_id] = body["input"].get("prompt", "")
            return JSONResponse({"request_id": "r-1", "output": {"task_id": task_id, "task_status": "PENDING"}})

        async def get(request: Request) -> Response:
            self.requests.append(f"GET {request.url.path}")
            task_id, auth = request.path_params["task_id"], request.headers.get("authorization", "")
            if "fail" in self.tasks.get(task_id, ""):
                output = {"task_status": "FAILED", "code": "InternalError", "message": f"rejected header {auth}"}
            else:
                link = f"{self.root}/v/{task_id}.mp4?Expires=4102444800&Signature={SIGNATURE}&echo={quote(auth)}"
                output = {"task_status": "SUCCEEDED", "video_url": link, "actual_prompt": f"as asked by {auth}",
                          "orig_prompt": auth}  # fmt: skip
            shown = self.status_id or task_id
            return JSONResponse({"request_id": f"r-{auth}", "output": {"task_id": shown, **output},
                                 "usage": {"echo": auth}})  # fmt: skip

        async def listing(request: Request) -> Response:
            self.requests.append(f"GET {request.url.path}")
            data = [{"task_id": i, "status": "RUNNING", "model_name": "wan2.2-i2v-flash"} for i in self.listed_ids]
            return JSONResponse({"total": len(data), "request_id": "r-2", "data": data})

        async def video(request: Request) -> Response:
            return Response(sample_video(), media_type="video/mp4")

        api = "/api/v1"
        return Starlette(routes=[
            Route(f"{api}/services/aigc/video-generation/video-synthesis", create, methods=["POST"]),
            Route(f"{api}/tasks/", listing), Route(f"{api}/tasks/{{task_id}}", get), Route("/v/{name}", video),
        ])  # fmt: skip


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    stand_in = Hostile()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stand_in.root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(stand_in.app(), lifespan="off", log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    yield stand_in
    server.should_exit = True
    thread.join(5)
    sock.close()


def settings_for(hostile: Hostile, tmp_path: Path) -> Settings:
    return Settings(api_key=API_KEY, base_url=f"{hostile.root}/api/v1", data_dir=tmp_path / "data",
                    allowed_dirs=(tmp_path,), poll_interval=0.2, download_hosts=("127.0.0.1",),
                    time_scale=100)  # fmt: skip


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(path)
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def journal_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}")]


# -- task ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", EVIL_IDS)
async def test_a_create_answer_with_a_bad_task_id_is_an_upstream_error(hostile: Hostile, evil: str) -> None:
    hostile.create_id = evil
    request = build_request({"image": "https://example.com/a.png"})
    async with DashScopeClient(API_KEY, f"{hostile.root}/api/v1", **QUICK) as client:
        with pytest.raises(AmbiguousCreate) as caught:
            await client.create_task(request, "https://example.com/a.png")
    assert caught.value.cause.code == "BadResponse" and "output.task_id" in caught.value.message
    assert evil not in caught.value.message
    assert hostile.requests == ["POST /api/v1/services/aigc/video-generation/video-synthesis"]  # sent once


@pytest.mark.parametrize("evil", ["../../outside/x", str(Path.home() / "Videos" / "holiday")])
async def test_a_bad_task_id_writes_nothing_outside_and_its_submission_stays_findable(
    hostile: Hostile, tmp_path: Path, image: Path, evil: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hostile.create_id = evil
    before = files_under(tmp_path)
    async with (
        Wanx.open(settings_for(hostile, tmp_path), client_options=QUICK) as wanx,
        Client(build_server(wanx)) as client,
    ):
        result = await client.call_tool("generate_and_wait", {"image": str(image), "wait_seconds": 2})
        assert result.is_error and "AmbiguousCreate" in result.content[0].text  # type: ignore[union-attr]
        assert "BadResponse" in result.content[0].text  # type: ignore[union-attr]
        submissions = await wanx.store.submissions()
        assert [s.outcome for s in submissions] == ["ambiguous"] and submissions[0].task_id is None
        assert await wanx.store.list_tasks() == []
        await anyio.sleep(0.5)  # a watcher that followed it would have polled and downloaded by now
    assert [r for r in hostile.requests if not r.startswith("POST")] == []
    created = files_under(tmp_path) - before
    assert all(p.is_relative_to(tmp_path / "data") and p.name.startswith("journal") for p in created), created
    assert evil not in caplog.text


async def test_listed_tasks_with_bad_ids_are_left_out(hostile: Hostile, tmp_path: Path) -> None:
    good = str(uuid.uuid4())
    hostile.listed_ids = ["../../etc/passwd", good, "/abs/path"]
    async with DashScopeClient(API_KEY, f"{hostile.root}/api/v1", **QUICK) as client:
        page = await client.list_tasks()
    assert [item.task_id for item in page.data] == [good]


async def test_a_status_answer_with_a_bad_task_id_is_refused(hostile: Hostile) -> None:
    hostile.status_id = "../../outside/x"
    async with DashScopeClient(API_KEY, f"{hostile.root}/api/v1", **QUICK) as client:
        with pytest.raises(DashScopeError) as caught:
            await client.get_task(str(uuid.uuid4()))
    assert caught.value.code == "BadResponse" and "output.task_id" in caught.value.message
    assert hostile.status_id not in str(caught.value)


# -- echoed secrets ----------------------------------------------------------------------------------------


async def test_an_echoed_key_appears_nowhere_and_no_signed_query_is_logged(
    hostile: Hostile, tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in DEBUG_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    seen: list[str] = []
    settings = settings_for(hostile, tmp_path)
    async with Wanx.open(settings, client_options=QUICK) as wanx, Client(build_server(wanx)) as client:
        args = {"image": str(image), "wait_seconds": 10}
        ok = await client.call_tool("generate_and_wait", args | {"prompt": "waves"})
        failed = await client.call_tool("generate_and_wait", args | {"prompt": "fail"})
        listed = await client.call_tool("list_tasks", {})
        task = ok.structured_content or {}
        for result in (ok, failed, listed):
            seen += [json.dumps(result.structured_content), *(getattr(b, "text", "") for b in result.content)]
        for uri in ("wanx://tasks", f"wanx://tasks/{task['task_id']}"):
            seen += [getattr(c, "text", "") for c in (await client.read_resource(uri)).contents]
    assert task["status"] == "SUCCEEDED" and Path(task["video_path"]).read_bytes() == sample_video()
    assert f"Signature={SIGNATURE}" in task["video_url"]  # the link stays usable for the agent
    assert (failed.structured_content or {})["status"] == "FAILED"
    assert "rejected header Bearer ***" in (failed.structured_content or {})["error_message"]
    rows = journal_rows(settings.journal_path)
    logged = [caplog.text, *(r.getMessage() for r in caplog.records)]
    assert "HTTP Request: GET" in caplog.text and "/v/" in caplog.text  # the download's httpx line is there
    for corpus in (seen, rows, logged):
        assert not [t for t in corpus if API_KEY in t or API_KEY[-16:] in t]
    assert not [t for t in logged if SIGNATURE in t or "Expires=" in t]


# -- strangers' tasks, malformed ids, unknown prompts -------------------------------------------------------


async def test_get_task_on_a_running_task_of_the_account_not_created_here(
    make_simulator: Callable[..., RunningSimulator], tmp_path: Path
) -> None:
    sim = make_simulator(speed=1.0)  # it stays PENDING or RUNNING for a while
    async with DashScopeClient(sim.api_key, sim.base_url) as other:
        foreign = (await other.create_task(build_request({"image": "https://example.com/a.png"}),
                                           "https://example.com/a.png")).output.task_id  # fmt: skip
    async with Wanx.open(support.settings_for(sim, tmp_path)) as wanx, Client(build_server(wanx)) as client:
        result = await client.call_tool("get_task", {"task_id": foreign})
        listed = await client.call_tool("list_tasks", {"start_time": "2000-01-01T00:00:00Z"})
    assert not result.is_error, result.content
    task = result.structured_content or {}
    assert task["status"] in ("PENDING", "RUNNING") and "not created through this server" in " ".join(task["notes"])
    assert not listed.is_error, listed.content


async def test_a_journal_row_of_a_model_the_catalog_lacks_is_followed(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    settings = support.settings_for(simulator, tmp_path)
    async with DashScopeClient(simulator.api_key, simulator.base_url) as other:
        created = await other.create_task(build_request({"image": "https://example.com/a.png"}),
                                          "https://example.com/a.png")  # fmt: skip
    old = Task(
        task_id=created.output.task_id, status=Status.PENDING, model="wanx-retired-model", created_at=iso(utcnow())
    )
    store = await open_store(settings)
    assert await store.insert_task(old, {})
    await store.close()
    async with Wanx.open(settings) as wanx, Client(build_server(wanx)) as client:
        result = await client.call_tool("get_task", {"task_id": old.task_id, "wait_seconds": 10})
    assert not result.is_error, result.content
    assert (result.structured_content or {})["status"] == "SUCCEEDED"


MALFORMED_IDS = ["../x", "abc", "a b c d e f g", "x" * 300, "aaaaaaaa\u202e", "AAAAAAAA%2f", "", "/etc/passwd"]


async def test_cancel_on_a_malformed_id_is_refused_locally(simulator: RunningSimulator, tmp_path: Path) -> None:
    async with Wanx.open(support.settings_for(simulator, tmp_path)) as wanx, Client(build_server(wanx)) as client:
        for task_id in MALFORMED_IDS:
            result = await client.call_tool("cancel_task", {"task_id": task_id})
            assert result.is_error and "InvalidInput: task_id=" in result.content[0].text, task_id  # type: ignore[union-attr]
    assert simulator.state.stats()["requests"] == []


async def test_an_unknown_prompt_or_missing_argument_is_a_clean_mcp_error(
    simulator: RunningSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Wanx.open(support.settings_for(simulator, tmp_path)) as wanx, Client(build_server(wanx)) as client:
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("no_such_prompt", {})
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("motion_prompt", {})
        good = await client.get_prompt("motion_prompt", {"subject": "a fox"})
    assert unknown.value.code == INVALID_PARAMS and "unknown prompt" in unknown.value.message
    assert "motion_prompt" in unknown.value.message
    assert missing.value.code == INVALID_PARAMS and "subject" in missing.value.message
    assert "a fox" in good.messages[0].content.text  # type: ignore[union-attr]
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.slow
async def test_a_server_process_at_debug_logs_no_echoed_key_and_no_signed_query(
    hostile: Hostile, tmp_path: Path, image: Path
) -> None:
    port, stderr, token = support.free_port(), tmp_path / "stderr.log", "hostile-token-not-a-secret"
    env = support.isolated_env(tmp_path, DASHSCOPE_HTTP_BASE_URL=f"{hostile.root}/api/v1", DASHSCOPE_API_KEY=API_KEY,
                               WANX_DOWNLOAD_HOSTS="127.0.0.1", WANX_LOG_LEVEL="DEBUG", WANX_MCP_TOKEN=token,
                               WANX_POLL_INTERVAL="0.3")  # fmt: skip
    command = [*support.WANX, "serve", "--transport", "http", "--port", str(port)]
    with support.listening(command, env, port, stderr):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with http, Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
            ok = await client.call_tool("generate_and_wait", {"image": str(image), "wait_seconds": 20})
            failed = await client.call_tool("generate_and_wait", {"image": str(image), "prompt": "fail"})
    task = ok.structured_content or {}
    assert task["status"] == "SUCCEEDED" and Path(task["video_path"]).read_bytes() == sample_video()
    assert (failed.structured_content or {})["status"] == "FAILED"
    logged = stderr.read_text()
    assert " DEBUG httpcore." in logged and "HTTP Request: GET" in logged and "/v/" in logged
    assert API_KEY not in logged and API_KEY[-16:] not in logged
    assert SIGNATURE not in logged and "Expires=" not in logged
