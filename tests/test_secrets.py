"""Secrets and confinement: the API key and the MCP token never show, local reads stay in WANX_ALLOWED_DIRS,
downloads come only from allowed hosts, and the HTTP transport turns away what it must."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import httpx2
import pytest
import support
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from wanx_mcp import redact
from wanx_mcp.config import Settings
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator, SimulatorConfig, running_simulator
from wanx_mcp.simulator.app import sample_video

pytestmark = pytest.mark.anyio

MakeSimulator = Callable[..., RunningSimulator]
API_KEY = "sk-wanx-LEAKCHECK-7f3e9d2a41c6b850"
WRONG_KEY = "sk-wanx-WRONGKEY-0b5c8e1f2a3d4967"
TOKEN = "tok-wanx-LEAKCHECK-1c9b2f7e5d3a8046"
SECRETS = (API_KEY, WRONG_KEY, TOKEN, API_KEY[-16:], WRONG_KEY[-16:], TOKEN[-16:])
QUICK_CLIENT: dict[str, Any] = {"timeout": 0.5, "backoff": 0.02, "max_backoff": 0.1}
DEBUG_LOGGERS = ("", "wanx_mcp", "mcp", "httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def settings_for(sim: RunningSimulator, tmp_path: Path, **changes: Any) -> Settings:
    return support.settings_for(sim, tmp_path, poll_interval=0.3, **changes)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def leaks(texts: list[str]) -> list[str]:
    """The texts that contain a secret (or a recognisable part of one)."""
    return [text for text in texts if any(secret in text for secret in SECRETS)]


def journal_dump(path: Path) -> list[str]:
    """Every row of every table of the journal, as text."""
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}")]


class Recorder:
    """Everything an MCP client got back: tool results (text and structured) and resource contents."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[str] = []

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        result = await self.client.call_tool(tool, arguments)
        self.seen += [text_of(result), json.dumps(result.structured_content)]
        return result

    async def read(self, uri: str) -> None:
        for content in (await self.client.read_resource(uri)).contents:
            blob = getattr(content, "blob", None)
            self.seen.append(getattr(content, "text", None) or base64.b64decode(blob or "").decode("latin-1"))


async def run_flows(agent: Recorder, sim: RunningSimulator, image: Path) -> None:
    """Success, moderation failure, retried and final errors, an ambiguous create, resources."""
    ok = await agent.call("generate_and_wait", {"image": str(image), "prompt": "waves"})
    assert ok.structured_content["status"] == "SUCCEEDED", text_of(ok)
    failed = await agent.call("generate_and_wait", {"image": str(image), "prompt": "[simulate:DataInspectionFailed]"})
    assert failed.structured_content["error_code"] == "DataInspectionFailed"
    sim.state.faults.add("create", "error", status=400, code="InvalidParameter")
    assert "InvalidParameter" in text_of(await agent.call("create_video_task", {"image": str(image)}))
    sim.state.faults.add("create", "accept_then_drop")
    ambiguous = await agent.call("create_video_task", {"image": str(image)})
    assert "AmbiguousCreate" in text_of(ambiguous)
    found = await agent.call("list_tasks", {"model_name": "wan2.2-i2v-flash"})
    assert len(found.structured_content["tasks"]) == 3
    sim.state.faults.add("get", "drop")
    sim.state.faults.add("get", "html_502")
    retried = await agent.call("generate_and_wait", {"image": str(image), "resolution": "480P"})
    assert retried.structured_content["status"] == "SUCCEEDED"
    refused = await agent.call("cancel_task", {"task_id": ok.structured_content["task_id"]})
    assert "UnsupportedOperation" in text_of(refused)
    await agent.call("get_task", {"task_id": "0000aaaa-1111-2222-3333-444455556666"})
    for uri in ("wanx://models", "wanx://tasks", f"wanx://tasks/{ok.structured_content['task_id']}"):
        await agent.read(uri)
    await agent.read(f"wanx://tasks/{ok.structured_content['task_id']}/video")


# -- secrets -----------------------------------------------------------------------------------------------


async def test_key_and_token_never_reach_results_resources_logs_or_the_journal(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in DEBUG_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    with running_simulator(SimulatorConfig(speed=200, jitter=False, api_keys={API_KEY}), log_level="debug") as sim:
        settings = settings_for(sim, tmp_path, api_key=API_KEY, mcp_token=TOKEN)
        async with Wanx.open(settings, client_options=QUICK_CLIENT) as wanx, Client(build_server(wanx)) as client:
            agent = Recorder(client)
            await run_flows(agent, sim, image)
        async with Wanx.open(replace(settings, api_key=WRONG_KEY)) as wanx, Client(build_server(wanx)) as client:
            unauthorized = await Recorder(client).call("create_video_task", {"image": str(image)})
            assert "InvalidApiKey" in text_of(unauthorized)
            agent.seen += [text_of(unauthorized), repr(wanx.client), repr(wanx.settings)]
    logged = [caplog.text] + [
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}" for record in caplog.records
    ]
    rows = journal_dump(settings.journal_path)
    # the corpus is real: debug logs of every layer, every kind of row, every kind of answer
    assert {"wanx_mcp.dashscope", "httpcore.http11", "uvicorn.access"} <= {r.name for r in caplog.records}
    assert len(rows) > 10 and any("ambiguous" in row or "recovered" in row for row in rows)
    assert len(agent.seen) > 20
    assert leaks(agent.seen) == [] and leaks(logged) == [] and leaks(rows) == []


async def test_server_process_keeps_secrets_and_turns_away_bad_http_requests(
    make_simulator: MakeSimulator, tmp_path: Path, image: Path
) -> None:
    sim = make_simulator(api_keys={API_KEY})
    port, stderr = support.free_port(), tmp_path / "stderr.log"
    env = support.isolated_env(tmp_path, **support.simulator_env(sim) | {"DASHSCOPE_API_KEY": API_KEY},
                               WANX_MCP_TOKEN=TOKEN, WANX_POLL_INTERVAL="0.3", WANX_LOG_LEVEL="DEBUG")  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    command = [*support.WANX, "serve", "--transport", "http", "--port", str(port)]
    with support.listening(command, env, port, stderr) as process:
        async with httpx.AsyncClient(timeout=30) as http:
            good = MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}"}
            missing = await http.post(url, json=PING, headers=MCP_HEADERS)
            wrong = await http.post(url, json=PING, headers=MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}x"})
            rebinding = await http.post(url, json=PING, headers=good | {"Host": "evil.example"})
            padding = b"a" * (29 * 1024 * 1024)  # over the 28 MiB limit (a 20 MB image as base64, plus JSON)
            huge = b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "' + padding + b'"}}'
            oversized = await http.post(url, content=huge, headers=good)
        assert (missing.status_code, wrong.status_code) == (401, 401) and "WANX_MCP_TOKEN" in missing.text
        assert rebinding.status_code == 421
        assert oversized.status_code == 413

        # none of that disturbed the server: the whole set of flows runs after it
        authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        async with authorized, Client(streamable_http_client(url, http_client=authorized)) as client:
            agent = Recorder(client)
            await run_flows(agent, sim, image)
        agent.seen += [r.text + repr(r.headers) for r in (missing, wrong, rebinding, oversized)]
        assert process.poll() is None

    logged = stderr.read_text()
    assert " DEBUG wanx_mcp.dashscope: " in logged and " DEBUG httpcore." in logged  # debug logging was on
    assert leaks(agent.seen) == [] and leaks(logged.splitlines()) == []
    assert leaks(journal_dump(tmp_path / "data" / "journal.sqlite3")) == []


# -- local files -------------------------------------------------------------------------------------------


async def test_local_images_are_confined_to_the_allowed_dirs_with_symlinks_resolved(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    secret = outside / "secret.png"
    Image.new("RGB", (640, 480), "#aa3366").save(secret)
    inside = allowed / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(inside)
    (allowed / "link.png").symlink_to(secret)
    (allowed / "linked-dir").symlink_to(outside, target_is_directory=True)
    (allowed / "inside-link.png").symlink_to(inside)
    outside_rule, hidden_rule = "outside the allowed folders", "hidden files and folders are refused"
    refused = [
        (str(secret), outside_rule),
        (str(allowed / "link.png"), outside_rule),  # a symlink out
        (str(allowed / "linked-dir" / "secret.png"), outside_rule),  # through a symlinked folder
        (str(allowed / ".." / "outside" / "secret.png"), outside_rule),
        ((allowed / "link.png").as_uri(), outside_rule),
        ("/etc/passwd", outside_rule),
        ("~/.ssh/id_rsa", hidden_rule),
    ]
    settings = settings_for(simulator, tmp_path, allowed_dirs=(allowed,))
    async with Wanx.open(settings) as wanx, Client(build_server(wanx)) as client:
        for image, rule in refused:
            result = await client.call_tool("create_video_task", {"image": image})
            assert result.is_error and "InvalidInput: image=" in text_of(result), image
            assert rule in text_of(result), (image, text_of(result))
        assert simulator.state.stats()["requests"] == []  # nothing was read and sent upstream
        ok = await client.call_tool("create_video_task", {"image": str(allowed / "inside-link.png")})
    assert not ok.is_error, text_of(ok)  # a link that stays inside is fine
    assert simulator.state.stats()["creates_received"] == 1


# -- downloads ---------------------------------------------------------------------------------------------


@contextmanager
def redirector(location: str) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback answering every GET with a 302 to ``location``; yields its root and hits."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@asynccontextmanager
async def finished_task(settings: Settings, image: Path) -> AsyncIterator[dict[str, Any]]:
    async with Wanx.open(settings) as wanx, Client(build_server(wanx)) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
        assert not result.is_error, text_of(result)
        yield dict(result.structured_content or {})


@pytest.mark.parametrize(
    ("video_host", "download_hosts", "reason"),
    [
        ("http://videos.evil.example", None, "host videos.evil.example is not an allowed download host"),
        (None, ("127.0.0.*",), "host 127.0.0.1 is at non-public address 127.0.0.1"),  # wildcard to a private IP
    ],
)
async def test_video_links_to_other_hosts_or_private_addresses_are_refused(
    make_simulator: MakeSimulator,
    tmp_path: Path,
    image: Path,
    video_host: str | None,
    download_hosts: tuple[str, ...] | None,
    reason: str,
) -> None:
    sim = make_simulator(video_base_url=video_host)
    settings = settings_for(sim, tmp_path)
    if download_hosts:
        settings = replace(settings, download_hosts=download_hosts)
    async with finished_task(settings, image) as task:
        assert task["status"] == "SUCCEEDED" and task["video_path"] is None
        assert task["video_url"].startswith(video_host or sim.root_url)
        assert f"download failed: DownloadRefused: {reason}" in " ".join(task["notes"])
        assert "download the video from video_url" in task["hint"]
    assert sim.state.stats()["downloads"] == 0
    assert not any(settings.videos_dir.glob("*")) if settings.videos_dir.exists() else True


@pytest.mark.parametrize(
    ("target", "extra_hosts", "reason"),
    [
        ("https://videos.evil.example/x.mp4", (), "redirect to host videos.evil.example is not an allowed"),
        ("http://169.254.169.254/latest/meta-data/x.mp4", ("169.254.*",), "redirect to host 169.254.169.254 is at"),
    ],
)
async def test_redirects_to_other_hosts_or_private_addresses_are_refused(
    make_simulator: MakeSimulator, tmp_path: Path, image: Path, target: str, extra_hosts: tuple[str, ...], reason: str
) -> None:
    with redirector(target) as (root, hits):
        sim = make_simulator(video_base_url=root)
        port = root.rsplit(":", 1)[1]
        settings = replace(settings_for(sim, tmp_path), download_hosts=(f"127.0.0.1:{port}", *extra_hosts))
        async with finished_task(settings, image) as task:
            note = " ".join(task["notes"])
    assert task["status"] == "SUCCEEDED" and task["video_path"] is None
    assert f"download failed: DownloadRefused: {reason}" in note, note
    assert len(hits) == 1 and hits[0].startswith(f"/results/{task['task_id']}.mp4")  # asked once, not retried
    assert sim.state.stats()["downloads"] == 0


async def test_the_simulators_own_host_allowed_downloads_the_video(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    """The control for the refusals above: with its host allowed, the same flow saves the video."""
    async with finished_task(settings_for(simulator, tmp_path), image) as task:
        assert Path(task["video_path"]).read_bytes() == sample_video()


# -- the redaction layer -----------------------------------------------------------------------------------


def test_redaction_of_upstream_texts_and_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    redact.register(API_KEY)
    redact.install()
    echoed = f"auth=Bearer {API_KEY}; again {quote(API_KEY)} and bearer%20tok-123.abc, Bearer\teyJ0eXAi0.x"
    assert redact.scrub(echoed) == "auth=Bearer ***; again *** and bearer%20***, Bearer\t***"
    assert redact.scrub("a flag bearer marching, Bearer realm=x") == "a flag bearer marching, Bearer realm=x"
    link = "https://x.oss-cn-beijing.aliyuncs.com/1/a.mp4?Expires=1&OSSAccessKeyId=LTAI&Signature=c2ln"
    assert redact.scrub(link) == link  # video_url stays usable for the agent
    line = f'HTTP Request: GET {link} "HTTP/1.1 200 OK"; "GET /v/a.mp4?Signature=c2ln HTTP/1.1"; what? ok'
    assert redact.for_log(line) == (
        'HTTP Request: GET https://x.oss-cn-beijing.aliyuncs.com/1/a.mp4?... "HTTP/1.1 200 OK"; '
        '"GET /v/a.mp4?... HTTP/1.1"; what? ok'
    )
    assert redact.scrub_tree({"output": [{"message": f"Bearer {API_KEY}"}], API_KEY: 1}) == {
        "output": [{"message": "Bearer ***"}], "***": 1
    }  # fmt: skip
    logger = logging.getLogger("wanx_mcp.test_redaction")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("HTTP Request: %s %s %r", "GET", httpx.URL(link), 200)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/mcp?token=abc", "1.1", 200)
        logger.info("key %s%s", API_KEY[:10], API_KEY[10:])  # a secret only once the arguments are put in
        try:
            raise RuntimeError(f"failed with {API_KEY}")
        except RuntimeError:
            logger.exception("boom")
    assert "Signature" not in caplog.text and "token=abc" not in caplog.text and API_KEY not in caplog.text
    access = caplog.records[1]
    assert isinstance(access.args, tuple) and len(access.args) == 5  # uvicorn's access formatter reads them
    assert "failed with ***" in caplog.text
