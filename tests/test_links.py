"""Video links on the HTTP transport: signed, expiring, range requests, refused without a token or signature,
served without loading the file into memory; and the capped video resource."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from PIL import Image
from support import WANX, free_port, isolated_env, listening, settings_for

from wanx_mcp.links import VideoLinks
from wanx_mcp.server import MAX_VIDEO_RESOURCE_BYTES, build_server
from wanx_mcp.service import Wanx
from wanx_mcp.transports import http_app

pytestmark = pytest.mark.anyio

TOKEN = "links-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """``wanx-mcp serve --transport http --simulate`` with a token (one for this module: starting one takes
    seconds); yields its base URL and process."""
    tmp_path = tmp_path_factory.mktemp("links")
    port = free_port()
    env = isolated_env(tmp_path, WANX_MCP_TOKEN=TOKEN, WANX_SIMULATOR_SPEED="200",
                       WANX_ALLOWED_DIRS=str(tmp_path_factory.getbasetemp()))  # each test's image
    command = [*WANX, "serve", "--transport", "http", "--port", str(port), "--simulate"]
    with listening(command, env, port, tmp_path / "server.log") as process:
        yield f"http://127.0.0.1:{port}", process


async def generate(base: str, image: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One generation over HTTP; the finished task and the tasks list_tasks returns afterwards."""
    auth = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    async with auth, Client(streamable_http_client(f"{base}/mcp", http_client=auth)) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
        task = result.structured_content
        assert task["status"] == "SUCCEEDED", task
        Image.new("RGB", (64, 36), "red").save(Path(task["video_path"]).with_name(f"{task['task_id']}.preview.jpg"))
        again = (await client.call_tool("get_task", {"task_id": task["task_id"]})).structured_content
        listed = (await client.call_tool("list_tasks", {})).structured_content["tasks"]
    listed_here = [t for t in listed if t["task_id"] == task["task_id"]]
    return again, listed_here


async def test_video_link_serves_the_saved_bytes_whole_and_in_ranges(server: tuple[str, Any], image: Path) -> None:
    base, _ = server
    task, listed = await generate(base, image)
    saved = Path(task["video_path"]).read_bytes()
    link = task["video_link"]
    assert link.startswith(f"{base}/videos/{task['task_id']}.mp4?exp=") and "&sig=" in link
    assert [t["video_link"] is not None for t in listed] == [True]
    async with httpx.AsyncClient() as http:
        whole = await http.get(link)
        part = await http.get(link, headers={"Range": "bytes=100-1099"})
        tail = await http.get(link, headers={"Range": "bytes=-200"})
        head = await http.head(link)
        preview = await http.get(task["preview_link"])
    assert whole.status_code == 200 and whole.content == saved
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206 and part.content == saved[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(saved)}"
    assert tail.status_code == 206 and tail.content == saved[-200:]
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(saved) and not head.content
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert preview.content == Path(task["video_path"]).with_name(f"{task['task_id']}.preview.jpg").read_bytes()


async def test_video_link_is_refused_without_a_valid_signature_or_token(server: tuple[str, Any], image: Path) -> None:
    base, _ = server
    task, _ = await generate(base, image)
    url = urlsplit(task["video_link"])
    query = parse_qs(url.query)
    path = f"{base}{url.path}"
    expires, signature = query["exp"][0], query["sig"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    async with httpx.AsyncClient() as http:
        bare = await http.get(path)
        forged = await http.get(path, params={"exp": expires, "sig": flipped})
        extended = await http.get(path, params={"exp": str(int(expires) + 3600), "sig": signature})
        signed = {"exp": expires, "sig": signature}
        other = await http.get(f"{base}/videos/{task['task_id']}.preview.jpg", params=signed)
        wrong_token = await http.get(path, headers={"Authorization": "Bearer nope"})
        with_token = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        unknown = await http.get(f"{base}/videos/00000000-0000-0000-0000-000000000000.mp4",
                                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        posted = await http.post(task["video_link"])
    for refused in (bare, forged, extended, other, wrong_token):
        assert refused.status_code == 401, refused.request.url
        assert "video_link" in refused.json()["message"]
    assert with_token.status_code == 200 and with_token.content == Path(task["video_path"]).read_bytes()
    assert unknown.status_code == 404
    assert posted.status_code == 405


def test_links_expire_and_bind_their_path(tmp_path: Path) -> None:
    links = VideoLinks.for_deployment("a-token", tmp_path)
    signed = links.sign("/videos/abcdefgh.mp4", now=time.time() - links.ttl - 1)
    expires, signature = (part.split("=")[1] for part in signed.split("?")[1].split("&"))
    assert not links.verify("/videos/abcdefgh.mp4", expires, signature)  # expired
    fresh = links.sign("/videos/abcdefgh.mp4").split("?")[1]
    expires, signature = (part.split("=")[1] for part in fresh.split("&"))
    assert links.verify("/videos/abcdefgh.mp4", expires, signature)
    assert not links.verify("/videos/abcdefgi.mp4", expires, signature)
    assert VideoLinks.for_deployment("a-token", tmp_path / "replica").verify("/videos/abcdefgh.mp4", expires, signature)
    assert not VideoLinks.for_deployment("another", tmp_path).verify("/videos/abcdefgh.mp4", expires, signature)
    assert not links.verify("/videos/abcdefgh.mp4", expires, None) and not links.verify("/videos/a.mp4", "x", "y")


def test_without_a_token_the_key_is_a_secret_kept_in_the_data_folder(tmp_path: Path) -> None:
    first = VideoLinks.for_deployment(None, tmp_path / "data")
    secret = tmp_path / "data" / "link-secret"
    assert secret.stat().st_mode & 0o077 == 0
    expires, signature = (part.split("=")[1] for part in first.sign("/videos/abcdefgh.mp4").split("?")[1].split("&"))
    assert VideoLinks.for_deployment(None, tmp_path / "data").verify("/videos/abcdefgh.mp4", expires, signature)
    assert not VideoLinks.for_deployment(None, tmp_path / "other").verify("/videos/abcdefgh.mp4", expires, signature)


def vm_peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc")
async def test_serving_a_large_video_keeps_the_server_memory_flat(server: tuple[str, Any], image: Path) -> None:
    base, process = server
    task, _ = await generate(base, image)
    size = 200 * 1024 * 1024
    with Path(task["video_path"]).open("wb") as sink:  # a 200 MB "video" (content does not matter here)
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            sink.write(block)
    before = vm_peak_rss(process.pid)
    received = 0
    async with httpx.AsyncClient(timeout=60) as http, http.stream("GET", task["video_link"]) as response:
        assert response.status_code == 200 and int(response.headers["content-length"]) == size
        async for chunk in response.aiter_raw():
            received += len(chunk)
    assert received == size
    grown = vm_peak_rss(process.pid) - before
    assert grown < 32 * 1024 * 1024, f"the server's peak RSS grew by {grown / 2**20:.0f} MB serving 200 MB"


@pytest.fixture
async def wanx(simulator: Any, tmp_path: Path) -> AsyncIterator[Wanx]:
    async with Wanx.open(settings_for(simulator, tmp_path)) as service:
        yield service


async def test_the_video_resource_refuses_a_video_too_large_for_one_message(wanx: Wanx, image: Path) -> None:
    async with Client(build_server(wanx)) as client:
        task = (await client.call_tool("generate_and_wait", {"image": str(image)})).structured_content
        uri = f"wanx://tasks/{task['task_id']}/video"
        small = (await client.read_resource(uri)).contents[0]
        assert small.mime_type == "video/mp4" and small.blob
        with Path(task["video_path"]).open("r+b") as video:
            video.truncate(MAX_VIDEO_RESOURCE_BYTES + 1)
        with pytest.raises(MCPError, match="video_link") as refused:
            await client.read_resource(uri)
    assert "video_path" in str(refused.value) and "32 MB" in str(refused.value)


async def test_without_a_token_a_link_still_needs_its_signature(wanx: Wanx, image: Path) -> None:
    task = await wanx.generate({"image": str(image), "resolution": "480P"}, 20)
    assert task.video_path
    links = VideoLinks.for_deployment(None, wanx.settings.data_dir)
    signed = links.attach(task, "http://127.0.0.1:8000/").video_link
    assert signed and signed.startswith(f"http://127.0.0.1:8000/videos/{task.task_id}.mp4?exp=")
    app = http_app(wanx, "127.0.0.1", 8000)  # no WANX_MCP_TOKEN: loopback only
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as http:
        good = await http.get(signed)
        bare = await http.get(f"/videos/{task.task_id}.mp4", headers={"Authorization": "Bearer anything"})
    assert good.status_code == 200 and good.content == Path(task.video_path).read_bytes()
    assert bare.status_code == 401
