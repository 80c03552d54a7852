"""``wanx-mcp demo``: one generation end to end through a real MCP client session, step by step."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from mcp import Client
from PIL import Image, ImageDraw

from .cli import EXIT_API, EXIT_INPUT, EXIT_OK, err, out
from .config import Settings, load_settings
from .server import build_server
from .service import Wanx

DEMO_PROMPT = "The sun rises slowly over the hills, clouds drift to the right, gentle camera push-in"


def draw_demo_image(folder: Path) -> Path:
    """A small landscape (PNG, 832x480) to animate."""
    image = Image.new("RGB", (832, 480), "#87ceeb")
    draw = ImageDraw.Draw(image)
    for y in range(300):
        draw.line([(0, y), (832, y)], fill=(135 + y // 6, 190 + y // 12, 235))
    draw.ellipse([560, 120, 680, 240], fill="#ffd54f")
    draw.polygon([(0, 480), (0, 330), (220, 250), (430, 340), (640, 270), (832, 350), (832, 480)], fill="#4caf50")
    draw.polygon([(0, 480), (0, 400), (300, 360), (560, 420), (832, 390), (832, 480)], fill="#2e7d32")
    path = folder / "demo-landscape.png"
    image.save(path)
    return path


async def run_demo(real: bool = False) -> int:
    """Print each step of list_models -> generate_and_wait -> get_task; return an exit code."""
    env = dict(os.environ)
    if real and not env.get("DASHSCOPE_API_KEY"):
        err.print("error: --real needs DASHSCOPE_API_KEY (or drop --real to use the free simulator)", markup=False)
        return EXIT_INPUT
    if not real:
        env["WANX_SIMULATE"] = "1"
    with tempfile.TemporaryDirectory(prefix="wanx-demo-") as folder:
        return await _demo(load_settings(env), Path(folder), real)


async def _demo(settings: Settings, folder: Path, real: bool) -> int:
    """The steps, with the first frame drawn in ``folder``."""
    settings = replace(settings, allowed_dirs=(*settings.allowed_dirs, folder))
    out.print(f"[bold]wanx-mcp demo[/bold] ({'real DashScope API' if real else 'built-in simulator: free, offline'})")
    async with Wanx.open(settings) as wanx, Client(build_server(wanx)) as client:
        tools = await client.list_tools()
        out.print(f"1. connected to MCP server; tools: {', '.join(t.name for t in tools.tools)}")
        models = (await client.call_tool("list_models", {})).structured_content or {}
        out.print(f"2. list_models: {len(models.get('models', []))} models; using wan2.2-i2v-flash at 480P")
        image = draw_demo_image(folder)
        out.print(f"3. drew a first frame: {image}")

        shown: set[str] = set()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            status = (message or "").split(" ", 1)[0]
            if status not in shown:  # each status once, not every few seconds
                shown.add(status)
                out.print(f"   progress: {message}", markup=False)

        arguments = {"image": str(image), "prompt": DEMO_PROMPT, "model": "wan2.2-i2v-flash", "resolution": "480P"}
        out.print("4. generate_and_wait ...")
        result = await client.call_tool("generate_and_wait", arguments, progress_callback=progress)
        while not result.is_error and (result.structured_content or {}).get("status") in ("PENDING", "RUNNING"):
            task_id = result.structured_content["task_id"]
            out.print(f"   still running; get_task({task_id}, wait_seconds=50) ...", markup=False)
            result = await client.call_tool(
                "get_task", {"task_id": task_id, "wait_seconds": 50}, progress_callback=progress
            )
        if result.is_error:
            err.print(f"error: {result.content[0].text if result.content else 'unknown'}", markup=False)
            return EXIT_API
        task = result.structured_content or {}
        out.print(f"5. {task.get('status')}: task {task.get('task_id')}", markup=False)
        if task.get("actual_prompt"):
            out.print(f"   actual_prompt: {task['actual_prompt']}", markup=False)
        if not task.get("video_path"):
            err.print(f"no video saved: {task.get('hint')}", markup=False)
            return EXIT_API
        out.print("6. saved video:")
        print(task["video_path"])
    return EXIT_OK
