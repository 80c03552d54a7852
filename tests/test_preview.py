"""What the agent sees of a finished video through MCP: the preview image block, the preview resource and the
video facts, in memory, over stdio and over HTTP, against the simulator (which renders the submitted image)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ImageContent, TextContent
from PIL import Image
from support import WANX, free_port, isolated_env, listening, settings_for, simulator_env

from wanx_mcp.config import load_settings
from wanx_mcp.media import examine, preview_path
from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator

pytestmark = pytest.mark.anyio

CAP = 1024 * 1024
TOKEN = "test-token-not-a-secret"
RED = (210, 30, 40)


@pytest.fixture
def red(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (640, 480), RED).save(path)
    return path


@pytest.fixture
def simulator(make_simulator: Callable[..., RunningSimulator]) -> RunningSimulator:
    """The fast simulator, rendering each result video from the submitted image."""
    return make_simulator(render=True)


@pytest.fixture
async def wanx(simulator: Any, tmp_path: Path) -> AsyncIterator[Wanx]:
    async with Wanx.open(settings_for(simulator, tmp_path)) as service:
        yield service


@pytest.fixture
async def client(wanx: Wanx) -> AsyncIterator[Client]:
    async with Client(build_server(wanx)) as session:
        yield session


def images_of(result: Any) -> list[ImageContent]:
    return [block for block in result.content if isinstance(block, ImageContent)]


def preview_of(result: Any) -> Image.Image:
    """The one preview image block of a tool result, checked: JPEG, under the cap, after the Task's JSON."""
    assert not result.is_error, result.content
    text, image = result.content
    assert isinstance(text, TextContent) and json.loads(text.text) == result.structured_content
    assert isinstance(image, ImageContent) and image.mime_type == "image/jpeg"
    data = base64.b64decode(image.data)
    assert len(data) < CAP
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "JPEG" and picture.width >= 300
    return picture


def red_dominated(picture: Image.Image) -> bool:
    r, g, b = picture.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return r > 150 and g < 90 and b < 90


async def test_generate_and_wait_returns_the_task_and_a_preview_of_the_submitted_image(
    client: Client, red: Path
) -> None:
    result = await client.call_tool(
        "generate_and_wait", {"image": str(red), "prompt": "a red wall", "resolution": "480P"}
    )
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and task["video_path"]
    assert red_dominated(preview_of(result))
    video = Path(task["video_path"])
    assert task["video"] == examine(video).facts.model_dump()
    assert task["video"]["codec"] == "h264" and task["video"]["bytes"] == video.stat().st_size
    # what the simulator renders: 480 lines at the image's 4:3, the asked 5 s at its 16 fps; nothing to note
    assert (task["video"]["width"], task["video"]["height"], task["video"]["duration_s"]) == (640, 480, 5.0)
    assert task["video"]["fps"] == 16.0 and not any("mismatch" in note for note in task["notes"])
    assert preview_path(video).is_file()


async def test_get_task_returns_the_preview_unless_asked_not_to(client: Client, red: Path) -> None:
    created = await client.call_tool("create_video_task", {"image": str(red), "resolution": "480P"})
    assert images_of(created) == []  # nothing to show yet
    task_id = created.structured_content["task_id"]
    waited = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 20})
    assert red_dominated(preview_of(waited))
    again = await client.call_tool("get_task", {"task_id": task_id})
    assert images_of(again) == images_of(waited)  # the cached sheet
    plain = await client.call_tool("get_task", {"task_id": task_id, "preview": False})
    assert images_of(plain) == [] and plain.structured_content["video"] == waited.structured_content["video"]
    assert [type(block) for block in plain.content] == [TextContent]


async def test_generate_and_wait_with_preview_false_has_no_image(client: Client, red: Path) -> None:
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P", "preview": False})
    assert result.structured_content["status"] == "SUCCEEDED" and result.structured_content["video"]
    assert images_of(result) == []


async def test_wanx_preview_0_leaves_the_image_out(simulator: Any, tmp_path: Path, red: Path) -> None:
    assert load_settings({"WANX_PREVIEW": "0"}).preview is False and load_settings({}).preview is True
    async with (
        Wanx.open(settings_for(simulator, tmp_path, preview=False)) as wanx,
        Client(build_server(wanx)) as client,
    ):
        result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
        task_id = result.structured_content["task_id"]
        assert result.structured_content["status"] == "SUCCEEDED" and images_of(result) == []
        assert images_of(await client.call_tool("get_task", {"task_id": task_id, "preview": True})) == []
        resource = (await client.read_resource(f"wanx://tasks/{task_id}/preview")).contents[0]
    assert resource.mime_type == "image/jpeg" and red_dominated(Image.open(io.BytesIO(base64.b64decode(resource.blob))))


async def test_preview_resource_reads_back_the_sheet(client: Client, red: Path) -> None:
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
    task_id = result.structured_content["task_id"]
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert "wanx://tasks/{task_id}/preview" in templates
    resource = (await client.read_resource(f"wanx://tasks/{task_id}/preview")).contents[0]
    assert resource.mime_type == "image/jpeg" and resource.blob == images_of(result)[0].data
    assert base64.b64decode(resource.blob) == preview_path(Path(result.structured_content["video_path"])).read_bytes()


async def test_preview_resource_of_a_task_without_video_is_not_found(client: Client, red: Path) -> None:
    created = await client.call_tool("create_video_task", {"image": str(red), "prompt": "[simulate:InternalError]"})
    task_id = created.structured_content["task_id"]
    failed = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 20})
    assert failed.structured_content["status"] == "FAILED" and images_of(failed) == []
    for uri in (f"wanx://tasks/{task_id}/preview", "wanx://tasks/no-such-task-000/preview"):
        with pytest.raises(Exception, match=r"no downloaded video|No task"):
            await client.read_resource(uri)


async def test_a_preview_that_cannot_be_made_leaves_the_task_as_it_is(client: Client, wanx: Wanx, red: Path) -> None:
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
    task = result.structured_content
    video = Path(task["video_path"])
    preview_path(video).unlink()
    video.write_bytes(video.read_bytes()[:2000])  # damaged on disk after the download
    again = await client.call_tool("get_task", {"task_id": task["task_id"]})
    assert not again.is_error and images_of(again) == [] and again.structured_content["status"] == "SUCCEEDED"


async def test_preview_must_be_a_boolean_and_nothing_is_sent(client: Client, simulator: Any, red: Path) -> None:
    result = await client.call_tool("generate_and_wait", {"image": str(red), "preview": "sometimes"})
    assert result.is_error and "preview" in result.content[0].text
    assert simulator.state.stats()["creates_received"] == 0


# -- what the simulator delivered wrong -------------------------------------------------------------


async def test_a_video_at_another_resolution_than_asked_is_noted(client: Client, simulator: Any, red: Path) -> None:
    simulator.state.faults.add("create", "wrong_resolution", value="480P")
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "720P"})
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and (task["video"]["width"], task["video"]["height"]) == (640, 480)
    assert "resolution mismatch: 720P asked, 640x480 delivered (480 lines)" in task["notes"]
    assert red_dominated(preview_of(result))
    right = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
    assert not any("mismatch" in note for note in right.structured_content["notes"])


async def test_a_video_that_does_not_decode_is_never_reported_as_saved(
    client: Client, simulator: Any, red: Path, tmp_path: Path
) -> None:
    simulator.state.faults.add("download", "corrupt_video", count=100)
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P", "wait_seconds": 3})
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and task["video_path"] is None and task["video"] is None
    assert images_of(result) == [] and "download the video from video_url" in task["hint"]
    assert simulator.state.stats()["downloads"] >= 1
    assert list((tmp_path / "data" / "videos").iterdir()) == []  # no video, no preview, no leftover .part


async def test_a_video_that_does_not_decode_is_downloaded_again(client: Client, simulator: Any, red: Path) -> None:
    simulator.state.faults.add("download", "corrupt_video")
    result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
    task = result.structured_content
    assert task["status"] == "SUCCEEDED" and task["video"]["height"] == 480
    assert task["video"] == examine(Path(task["video_path"])).facts.model_dump()
    assert red_dominated(preview_of(result)) and simulator.state.stats()["downloads"] == 2


# -- over stdio and HTTP ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_stdio_server_returns_the_preview(simulator: Any, tmp_path: Path, red: Path) -> None:
    params = StdioServerParameters(
        command=WANX[0], args=WANX[1:], env=isolated_env(tmp_path, **simulator_env(simulator))
    )
    async with Client(params) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
        assert red_dominated(preview_of(result))
        plain = await client.call_tool("get_task", {"task_id": result.structured_content["task_id"], "preview": False})
    assert images_of(plain) == [] and plain.structured_content["video"] == result.structured_content["video"]


@pytest.mark.slow
async def test_stdio_server_with_wanx_preview_0_sends_no_image(simulator: Any, tmp_path: Path, red: Path) -> None:
    env = isolated_env(tmp_path, **simulator_env(simulator), WANX_PREVIEW="0")
    async with Client(StdioServerParameters(command=WANX[0], args=WANX[1:], env=env)) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
    assert result.structured_content["status"] == "SUCCEEDED" and images_of(result) == []


@pytest.fixture
def http_server(simulator: Any, tmp_path: Path) -> Iterator[str]:
    """``wanx-mcp serve --transport http`` against the test's simulator; yields its /mcp URL."""
    port = free_port()
    env = isolated_env(tmp_path, **simulator_env(simulator), WANX_MCP_TOKEN=TOKEN)
    with listening([*WANX, "serve", "--transport", "http", "--port", str(port)], env, port, tmp_path / "server.log"):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.mark.slow
async def test_http_server_returns_the_preview_and_its_resource(http_server: str, red: Path) -> None:
    auth = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    async with auth, Client(streamable_http_client(http_server, http_client=auth)) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(red), "resolution": "480P"})
        assert red_dominated(preview_of(result))
        uri = f"wanx://tasks/{result.structured_content['task_id']}/preview"
        resource = (await client.read_resource(uri)).contents[0]
    assert resource.blob == images_of(result)[0].data
