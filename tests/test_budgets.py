"""Budgets instead of luck: a full disk stops retrying after a bounded time, settings for the budgets, and (slow)
the peak memory of a real server process under big transparent images and many large request bodies."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import support
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from wanx_mcp import downloads, watcher
from wanx_mcp.config import load_settings
from wanx_mcp.errors import InvalidInput
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator

pytestmark = pytest.mark.anyio

TOKEN = "budget-token-not-a-secret"
#: The server's peak RSS must stay under this (today: 3.87 GB for seven such fits, 2.79 GB for the bodies).
RSS_LIMIT_MB = 800


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_full_disk_stops_retrying_after_a_bounded_time_with_a_clear_note(
    simulator: RunningSimulator, tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(watcher, "DOWNLOAD_BACKOFF", 0.01)
    monkeypatch.setattr(watcher, "DOWNLOAD_MAX_BACKOFF", 0.05)
    monkeypatch.setattr(downloads, "DISK_FULL_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(os, "fsync", full)  # every write of the video "fills the disk", for good
    settings = support.settings_for(simulator, tmp_path, poll_interval=0.3)
    async with Wanx.open(settings) as wanx, Client(build_server(wanx)) as client:
        created = await client.call_tool("create_video_task", {"image": str(image), "resolution": "480P"})
        task_id = (created.structured_content or {})["task_id"]
        await until(lambda: simulator.state.stats()["downloads"] > 0)
        await until(lambda: not wanx.watcher.is_following(task_id))  # it gave up: no download loop left
        attempts = simulator.state.stats()["downloads"]
        await anyio.sleep(0.3)
        assert simulator.state.stats()["downloads"] == attempts  # and nothing more is tried
        task = (await client.call_tool("get_task", {"task_id": task_id})).structured_content or {}
    note = " ".join(task["notes"])
    assert task["status"] == "SUCCEEDED" and task["video_path"] is None
    assert "download failed: DownloadFailed: disk full" in note and "gave up after 0.5 s of retrying" in note, note
    assert "download the video from video_url" in task["hint"]
    assert list(settings.videos_dir.iterdir()) == []


def test_the_budget_settings_are_read_and_checked() -> None:
    settings = load_settings({"WANX_DOWNLOAD_CONCURRENCY": "3", "WANX_HTTP_HEADER_TIMEOUT": "2.5"})
    assert (settings.download_concurrency, settings.http_header_timeout) == (3, 2.5)
    assert (load_settings({}).download_concurrency, load_settings({}).http_header_timeout) == (2, 10.0)
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(InvalidInput, match="WANX_DOWNLOAD_CONCURRENCY"):
            load_settings({"WANX_DOWNLOAD_CONCURRENCY": bad})
    with pytest.raises(InvalidInput, match="WANX_HTTP_HEADER_TIMEOUT"):
        load_settings({"WANX_HTTP_HEADER_TIMEOUT": "0"})


# -- memory of a real server process (slow) ----------------------------------------------------------------

BIG_PNG = """
import sys
from PIL import Image, ImageDraw
img = Image.new("RGBA", (7999, 7999), (0, 0, 0, 0))
ImageDraw.Draw(img).ellipse((1000, 1000, 7000, 7000), fill=(200, 40, 40, 255))
img.save(sys.argv[1], optimize=True)
"""


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # sixteen fits of a 64-megapixel image (each create checks it, then prepares it to send)
async def test_server_peak_memory_stays_bounded_under_big_images_and_bodies(
    tmp_path: Path, simulator: RunningSimulator, record_property: Callable[[str, object], None]
) -> None:
    png = tmp_path / "transparent.png"
    subprocess.run([sys.executable, "-c", BIG_PNG, str(png)], check=True, timeout=300)  # not in this process
    assert png.stat().st_size < 400_000
    port = support.free_port()
    # the simulator runs in this process, so the server's resident set is the server's own (a built-in
    # simulator would decode and render the submitted 64-megapixel image inside the measured process)
    env = support.isolated_env(tmp_path, **support.simulator_env(simulator), WANX_MCP_TOKEN=TOKEN)
    command = [*support.WANX, "serve", "--transport", "http", "--port", str(port)]
    url, headers = f"http://127.0.0.1:{port}/mcp", {"Authorization": f"Bearer {TOKEN}"}
    with support.listening(command, env, port, tmp_path / "server.log") as process:
        http = httpx2.AsyncClient(headers=headers, timeout=1200)
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            results: list[Any] = []

            async def fit() -> None:
                results.append(await client.call_tool("create_video_task", {"image": str(png), "fit_image": True}))

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(fit)
        assert len(results) == 8 and not [r for r in results if r.is_error], [r.content for r in results]
        assert all("flattened transparency" in " ".join(r.structured_content["notes"]) for r in results)
        after_images = peak_rss_mb(process.pid)

        body = b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "' + b"a" * (27 * 2**20) + b'"}}'
        statuses: list[int] = []

        async def post(http: httpx.AsyncClient) -> None:
            answer = await http.post(url, content=body, headers=headers | {
                "Accept": "application/json, text/event-stream", "Content-Type": "application/json"})  # fmt: skip
            statuses.append(answer.status_code)

        raw = httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=40))
        async with raw, anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(post, raw)
        peak = peak_rss_mb(process.pid)
        assert process.poll() is None
    record_property("server_peak_rss_mb_images", round(after_images, 1))
    record_property("server_peak_rss_mb", round(peak, 1))
    print(f"server peak RSS (VmHWM): {after_images:.0f} MB after 8 fits of a 7999x7999 transparent PNG, "
          f"{peak:.0f} MB after 40 bodies of 27 MB at once ({statuses.count(503)} answered 503)")  # fmt: skip
    assert len(statuses) == 40 and set(statuses) <= {400, 503} and 503 in statuses, statuses
    assert peak < RSS_LIMIT_MB
