"""The server as users run it: a stdio subprocess, streamable HTTP under uvicorn, and the demo command."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
