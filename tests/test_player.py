"""The MCP Apps player: its registration, what clients without Apps see, and the page in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from PIL import Image
from support import WANX, free_port, isolated_env, listening, settings_for

from wanx_mcp.server import PLAYER_URI, build_server
from wanx_mcp.service import Wanx

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "player-test-token"
APPS = [advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})]
SHOWN = ("prompt", "actual", "model", "resolution", "duration", "cost")


@pytest.fixture
async def wanx(simulator: Any, tmp_path: Path) -> AsyncIterator[Wanx]:
    async with Wanx.open(settings_for(simulator, tmp_path)) as service:
        yield service


async def test_the_player_is_bound_to_the_two_waiting_tools_and_served_as_an_app(wanx: Wanx) -> None:
    async with Client(build_server(wanx), extensions=APPS) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        bound = {name for name, tool in tools.items() if (tool.meta or {}).get("ui", {}).get("resourceUri")}
        assert bound == {"generate_and_wait", "get_task"}
        assert tools["get_task"].meta["ui"] == {"resourceUri": PLAYER_URI}
        listed = {str(resource.uri): resource for resource in (await client.list_resources()).resources}
        assert listed[PLAYER_URI].mime_type == APP_MIME_TYPE
        (page,) = (await client.read_resource(PLAYER_URI)).contents
    assert page.mime_type == APP_MIME_TYPE
    assert page.meta["ui"]["csp"] == {"connectDomains": [], "resourceDomains": [], "frameDomains": [],
                                      "baseUriDomains": []}  # fmt: skip
    html = page.text
    assert html.startswith("<!doctype html>") and "ui/initialize" in html  # the ext-apps runtime is inline
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=["']?https?:""", html)  # nothing fetched
    assert len(html.encode()) < 600_000


async def test_clients_without_apps_see_the_same_tools_and_results(wanx: Wanx, image: Path) -> None:
    async def session(extensions: list[Any]) -> tuple[list[Any], Any]:
        async with Client(build_server(wanx), extensions=extensions) as client:
            tools = [tool.model_dump() for tool in (await client.list_tools()).tools]
            result = await client.call_tool("list_models", {})
            return tools, result.structured_content

    plain_tools, plain_models = await session([])
    app_tools, app_models = await session(APPS)
    assert plain_tools == app_tools and plain_models == app_models
    async with Client(build_server(wanx)) as client:
        result = await client.call_tool("generate_and_wait", {"image": str(image), "resolution": "480P"})
    assert not result.is_error and result.structured_content["status"] == "SUCCEEDED"
    assert result.structured_content["video_link"] is None  # not over HTTP
    assert '"task_id"' in result.content[0].text  # the text fallback is the task itself


def test_the_committed_player_is_the_build_of_its_sources(tmp_path: Path) -> None:
    """scripts/build_player.mjs turns scripts/player/ into wanx_mcp/player/player.html; the two must agree."""
    if not (BROWSER_DIR / "node_modules" / "esbuild").is_dir():
        pytest.skip("run `npm ci` in tests/browser first (.ci/run does)")
    committed = (REPO / "wanx_mcp" / "player" / "player.html").read_bytes()
    copy = tmp_path / "repo"
    for part in ("scripts", "wanx_mcp/player"):
        shutil.copytree(REPO / part, copy / part)
    (copy / "tests").mkdir()
    (copy / "tests" / "browser").symlink_to(BROWSER_DIR)
    subprocess.run(["node", str(copy / "scripts" / "build_player.mjs")], check=True, capture_output=True, timeout=60)
    assert (copy / "wanx_mcp" / "player" / "player.html").read_bytes() == committed


# --- the player in a real browser -------------------------------------------------------------------------------


@pytest.fixture
def host_bundle(tmp_path: Path) -> Path:
    """tests/browser/host.js bundled (esbuild) with the MCP client and the ext-apps AppBridge."""
    if not (BROWSER_DIR / "node_modules" / "esbuild").is_dir():
        pytest.skip("run `npm ci` in tests/browser first (.ci/run does)")
    out = tmp_path / "host.bundle.js"
    esbuild = BROWSER_DIR / "node_modules" / ".bin" / "esbuild"
    subprocess.run([str(esbuild), "host.js", "--bundle", "--format=esm", f"--outfile={out}", "--log-level=warning"],
                   cwd=BROWSER_DIR, check=True, timeout=60)  # fmt: skip
    return out


@pytest.fixture
def player_server(tmp_path: Path) -> Iterator[int]:
    """``wanx-mcp serve --transport http --simulate`` with a token, slow enough that the player sees it run."""
    port = free_port()
    env = isolated_env(tmp_path, WANX_MCP_TOKEN=TOKEN, WANX_SIMULATOR_SPEED="15")
    command = [*WANX, "serve", "--transport", "http", "--port", str(port), "--simulate"]
    with listening(command, env, port, tmp_path / "server.log"):
        yield port


def until(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    """Poll ``condition`` from here: the player's CSP forbids the eval that in-page waiting functions use."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


@pytest.mark.slow
def test_the_player_plays_the_video_in_chromium(tmp_path: Path, host_bundle: Path, player_server: int) -> None:
    """A host page made of the official MCP client and AppBridge renders the player for generate_and_wait (which
    returns the task still PENDING): the player follows it through get_task, then plays the video it reads through
    the server; a failed task shows its error. The screenshot stays in the test's tmp_path."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "frame.png"
    Image.new("RGB", (832, 480), "#cc3322").save(image)
    origin = f"http://127.0.0.1:{player_server}"
    files = {"/host/index.html": (BROWSER_DIR / "index.html", "text/html"),
             "/host/host.bundle.js": (host_bundle, "text/javascript")}  # fmt: skip

    def serve_host(route: Any) -> None:
        path, content_type = files[route.request.url.removeprefix(origin).split("?")[0]]
        route.fulfill(status=200, body=path.read_bytes(), content_type=content_type)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 760, "height": 720})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.route(re.compile(rf"^{re.escape(origin)}/host/"), serve_host)
            page.goto(f"{origin}/host/index.html?token={TOKEN}&image={image}&prompt=a+red+wall+slowly+comes+closer")
            player = page.frame_locator("iframe")
            try:
                # While the task runs the player shows its status (it asks get_task through the bridge).
                player.locator("#status").filter(has_text=re.compile("PENDING|RUNNING")).wait_for(timeout=30_000)
                frame = next(frame for frame in page.frames if frame != page.main_frame)
                video = frame.locator("video")
                until(lambda: video.evaluate("v => v.readyState") >= 3, 60, "the video never became playable")
                start = video.evaluate("v => v.currentTime")
                until(lambda: video.evaluate("v => v.currentTime") > start + 0.3, 15, "the video does not play")
                state = page.evaluate("window.hostState")
                assert state["phase"] == "delivered", state
                shown = {row: player.locator(f"#{row} dd").inner_text() for row in SHOWN}
            except (sync_api.Error, AssertionError) as exc:
                state = page.evaluate("window.hostState")
                raise AssertionError(f"{exc}\nhost: {state}\nconsole: {console}") from exc
            page.screenshot(path=str(tmp_path / "player.png"), full_page=True)
            page.goto(f"{origin}/host/index.html?token={TOKEN}&image={image}&prompt=%5Bsimulate:DataInspectionFailed%5D")
            player.locator("#message").filter(has_text="DataInspectionFailed").wait_for(timeout=30_000)
            failed = player.locator("#status").inner_text()
        finally:
            browser.close()
    assert shown["prompt"] == "a red wall slowly comes closer", (shown, console)
    assert shown["actual"].lower().startswith(shown["prompt"]) and len(shown["actual"]) > len(shown["prompt"])
    assert shown["model"] == "wan2.2-i2v-flash" and shown["resolution"].startswith("480P")
    assert shown["duration"] == "5 s" and shown["cost"] == "≈ 0.50 CNY"
    assert failed.startswith(("FAILED", "ERROR")), failed
    readme_image = REPO / "docs" / "player.png"
    if not readme_image.exists():  # the README's screenshot: delete it to take a new one
        shutil.copy(tmp_path / "player.png", readme_image)
