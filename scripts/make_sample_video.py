"""Generate ``wanx_mcp/simulator/assets/sample.mp4``, the video every simulated task "produces".

Needs PyAV (the ``dev`` extra); the simulator itself only serves the committed file.
Run: ``python scripts/make_sample_video.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
from PIL import Image, ImageDraw

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 24, 2
OUTPUT = Path(__file__).resolve().parent.parent / "wanx_mcp" / "simulator" / "assets" / "sample.mp4"


def draw_frame(index: int) -> Image.Image:
    """A sky-to-grass gradient with a bouncing ball and a sliding square."""
    t = index / FPS
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    for y in range(HEIGHT):
        shade = y / HEIGHT
        color = (40, 90, 160) if y < HEIGHT * 0.7 else (50, 130, 60)
        draw.line([(0, y), (WIDTH, y)], fill=tuple(int(c * (0.6 + 0.4 * shade)) for c in color))
    x = int((WIDTH - 60) * (0.5 + 0.5 * math.sin(2 * math.pi * t / SECONDS)))
    draw.rectangle([x, 150, x + 60, 200], fill=(230, 180, 40))
    bounce = abs(math.sin(2 * math.pi * t))
    cx, cy, r = int(40 + 240 * t / SECONDS), int(150 - 100 * bounce), 18
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(240, 240, 240))
    draw.text((8, 8), f"wanx simulator  {t:4.2f} s", fill=(255, 255, 255))
    return image


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(OUTPUT), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "30", "preset": "veryslow", "tune": "animation"}
        for index in range(FPS * SECONDS):
            frame = av.VideoFrame.from_image(draw_frame(index))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
