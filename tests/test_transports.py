"""The server as users run it: a stdio subprocess, streamable HTTP under uvicorn, and the demo command."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from support import WANX, free_port, isolated_env, listening, simulator_env

pytestmark = pytest.mark.anyio

TOKEN = "test-token-not-a-secret"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "frame.jpg"
    Image.new("RGB", (480, 480), "#aa6633").save(path)
    return path


async def test_stdio_subprocess_generates_a_video(simulator: Any, tmp_path: Path, image: Path) -> None:
    env = isolated_env(tmp_path, **simulator_env(simulator))
    params = StdioServerParameters(command=WANX[0], args=WANX[1:], env=env)
    async with Client(params) as client:
        assert len((await client.list_tools()).tools) == 6
        result = await client.call_tool("generate_and_wait", {"image": str(image), "prompt": "leaves fall"})
    task = result.structured_content
    assert not result.is_error and task["status"] == "SUCCEEDED"
    assert Path(task["video_path"]).read_bytes()[4:8] == b"ftyp"
    assert simulator.api_key not in repr(task)
    assert simulator.state.stats()["tasks_created"] == 1


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """``wanx-mcp serve --transport http --simulate`` as a subprocess; yields its /mcp URL."""
    port = free_port()
    env = isolated_env(tmp_path, WANX_MCP_TOKEN=TOKEN, WANX_SIMULATOR_SPEED="200")
    command = [*WANX, "serve", "--transport", "http", "--port", str(port), "--simulate"]
    with listening(command, env, port, tmp_path / "server.log"):
        yield f"http://127.0.0.1:{port}/mcp"


async def test_http_requires_the_token_and_checks_the_host(http_server: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        missing = await http.post(http_server, json=body, headers=headers)
        wrong = await http.post(http_server, json=body, headers=headers | {"Authorization": "Bearer nope"})
        rebinding = await http.post(
            http_server, json=body, headers=headers | {"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"}
        )
    assert missing.status_code == 401 and wrong.status_code == 401
    assert "WANX_MCP_TOKEN" in missing.text
    assert rebinding.status_code in (400, 403, 421)


async def test_http_client_with_token_generates_a_video(http_server: str, image: Path) -> None:
    auth = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    async with auth, Client(streamable_http_client(http_server, http_client=auth)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "generate_and_wait" in names
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
    assert result.structured_content["status"] == "SUCCEEDED"
    assert Path(result.structured_content["video_path"]).is_file()


def test_http_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [*WANX, "serve", "--transport", "http", "--host", "0.0.0.0", "--simulate"],
        env=isolated_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "needs WANX_MCP_TOKEN" in done.stderr


def test_demo_prints_the_saved_video(tmp_path: Path) -> None:
    done = subprocess.run(
        [*WANX, "demo"],
        env=isolated_env(tmp_path, WANX_SIMULATOR_SPEED="100"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = Path(done.stdout.strip().splitlines()[-1])
    assert saved.is_file() and saved.read_bytes()[4:8] == b"ftyp"
    assert "generate_and_wait" in done.stdout and "progress:" in done.stdout


PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
#: What a ping outside a session gets once it is past the token check and read: the SDK's 400 (no session).
READ = 400
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def padded_ping(size: int) -> bytes:
    """A JSON-RPC ping of about ``size`` bytes."""
    return b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "' + b"a" * size + b'"}}'


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One HTTP server for this module's abuse tests that gives clients 2 s to send their headers (or, mid-body,
    their next bytes); yields its /mcp URL."""
    tmp_path, port = tmp_path_factory.mktemp("impatient"), free_port()
    env = isolated_env(tmp_path, WANX_MCP_TOKEN=TOKEN, WANX_SIMULATOR_SPEED="200", WANX_HTTP_HEADER_TIMEOUT="2")
    command = [*WANX, "serve", "--transport", "http", "--port", str(port), "--simulate"]
    with listening(command, env, port, tmp_path / "server.log"):
        yield f"http://127.0.0.1:{port}/mcp"


async def test_http_bearer_scheme_is_case_insensitive(impatient_server: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        answers = {
            auth: (await http.post(impatient_server, json=PING, headers=MCP_HEADERS | {"Authorization": auth}))
            .status_code
            for auth in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}", f"Basic {TOKEN}", "Bearer", TOKEN)
        }
    assert answers == {f"bearer {TOKEN}": READ, f"BEARER {TOKEN}": READ, f"Bearer  {TOKEN}": READ,
                       f"Basic {TOKEN}": 401, "Bearer": 401, TOKEN: 401}  # fmt: skip


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def held_upload(port: int, length: int, sent: int) -> socket.socket:
    """A connection that declares a ``length``-byte body, sends ``sent`` bytes of it and then waits."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {length}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + b"a" * sent)
    return sock


async def test_request_bodies_beyond_the_memory_budget_get_503_with_retry_after(impatient_server: str) -> None:
    http_server, body = impatient_server, padded_ping(3 * 2**20)
    headers = MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}"}
    holders = [held_upload(port_of(http_server), 27 * 2**20, 2**20) for _ in range(2)]  # 54 MB announced
    stop = threading.Event()

    def trickle() -> None:  # slow uploads, not stalled ones: a byte every 0.2 s keeps the idle timeout away
        while not stop.wait(0.2):
            for holder in holders:
                with contextlib.suppress(OSError):
                    holder.send(b"a")

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(100):  # until the server has read both holders' headers
                refused = await http.post(http_server, content=body, headers=headers)
                if refused.status_code == 503:
                    break
                await anyio.sleep(0.05)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert "retry" in refused.json()["message"]
            stop.set()
            feeder.join()
            for holder in holders:
                holder.close()
            for _ in range(100):  # the holders' reservations end once the server sees them gone
                accepted = await http.post(http_server, content=body, headers=headers)
                if accepted.status_code != 503:
                    break
                await anyio.sleep(0.05)
        assert accepted.status_code == READ and "session" in accepted.text.lower(), accepted.text
    finally:
        stop.set()
        for holder in holders:
            holder.close()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


async def test_slow_clients_are_disconnected_by_header_and_idle_timeouts(impatient_server: str) -> None:
    port = port_of(impatient_server)
    partial = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bear"
    slowloris = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(partial)
        slowloris.append(sock)
    silent = socket.create_connection(("127.0.0.1", port))  # connects and never sends anything
    stalled = held_upload(port, 10_000, 100)  # headers, then a body that stops coming
    try:
        assert all(closed_by_server(sock, 20) for sock in [*slowloris, silent, stalled])
        async with httpx.AsyncClient(timeout=30) as http:  # the server still serves everyone else
            ok = await http.post(f"http://127.0.0.1:{port}/mcp", json=PING,
                                 headers=MCP_HEADERS | {"Authorization": f"bearer {TOKEN}"})  # fmt: skip
        assert ok.status_code == READ
    finally:
        for sock in [*slowloris, silent, stalled]:
            sock.close()
