"""Measure the video side: ``python -m bench.media`` prints JSON, one object per size.

For each of 480P, 720P and 1080P (16:9, 5 s): the simulator's ``render_video`` (wall and CPU seconds, with and
without a last frame), then ``examine`` (decoding every frame, as after each download) and ``contact_sheet``
of the result, and the sheet's size in bytes. Best of ``RUNS``; the picture is a detailed synthetic one.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from wanx_mcp.media import contact_sheet, examine
from wanx_mcp.simulator.render import render_video

RUNS = 3
SIZES = {"480P": (832, 480, 16), "720P": (1280, 720, 16), "1080P": (1920, 1080, 30)}


def picture(width: int, height: int) -> Image.Image:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(30):
        x, y = i * width // 30, i * height // 40
        draw.ellipse((x, y, x + width // 6, y + height // 5), fill=(i * 8, 200 - i * 6, 90), outline="white", width=3)
    return image


def best(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """The fastest of RUNS calls: wall seconds, CPU seconds of this process, and the result."""
    runs = []
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu, result))
    return min(runs, key=lambda run: run[0])


def main() -> None:
    first, last = picture(1600, 1200), picture(1200, 1200).transpose(Image.Transpose.ROTATE_90)
    with tempfile.TemporaryDirectory() as folder:
        for name, (width, height, fps) in SIZES.items():
            clip = partial(render_video, width=width, height=height, seconds=5, fps=fps)
            render, fade = best(partial(clip, first, None)), best(partial(clip, first, last))
            path = Path(folder) / f"{name}.mp4"
            path.write_bytes(render[2])
            probe = best(partial(examine, path))
            sheet = best(partial(contact_sheet, probe[2].frames))
            print(json.dumps({
                "resolution": name, "size": f"{width}x{height}", "fps": fps, "seconds": 5,
                "render_s": round(render[0], 3), "render_cpu_s": round(render[1], 3),
                "render_with_last_s": round(fade[0], 3), "video_bytes": len(render[2]),
                "examine_s": round(probe[0], 3), "examine_cpu_s": round(probe[1], 3),
                "sheet_s": round(sheet[0], 3), "sheet_bytes": len(sheet[2]),
            }))  # fmt: skip


if __name__ == "__main__":
    main()
