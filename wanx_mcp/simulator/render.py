"""The simulator's result video: an H.264 MP4 made from the submitted image(s).

``render_video`` fills the requested size with ``first`` (scaled to cover it, centred), pans slowly across
it and, when ``last`` is given, cross-fades into it so that the clip ends exactly on ``last``. For speed the
images are converted to YUV once; each frame is then a crop (and during the fade a blend) of those planes,
encoded with libx264 (ultrafast, yuv420p) into an MP4 whose index (moov) comes first, so browsers can
play it while it downloads.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction

import av
from PIL import Image

PAN = 0.10
"""How far the view of ``first`` moves across it over the clip, as a fraction of the frame's width."""
FADE = (0.35, 0.85)
"""The part of the clip (as fractions of its length) over which ``first`` cross-fades into ``last``."""

Planes = tuple[Image.Image, Image.Image, Image.Image]
"""An image as its Y, U and V planes (yuv420p: U and V at half the size), each an "L" image."""


def render_video(
    first: Image.Image, last: Image.Image | None, *, width: int, height: int, seconds: float, fps: int
) -> bytes:
    """An MP4 of exactly ``round(seconds * fps)`` frames of ``width`` x ``height`` at ``fps``."""
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive even numbers, not {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    count = round(seconds * fps)
    if count < 1:
        raise ValueError(f"{seconds} s at {fps} fps makes no frame")
    span, rise = _even(width * PAN), _even(height * PAN)
    start = _planes(_cover(first, width + span, height + rise))
    end = _planes(_cover(last, width, height)) if last is not None else None
    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="wanx-render-")
    os.close(fd)
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.options = {"preset": "ultrafast", "crf": "23"}
            for index in range(count):
                t = index / max(count - 1, 1)
                frame = _frame(start, end, t, (_even(span * _smooth(t)), rise // 2), width, height)
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        with open(path, "rb") as file:
            return file.read()
    finally:
        os.unlink(path)


def _even(value: float) -> int:
    return 2 * round(value / 2)


def _smooth(t: float) -> float:
    """Smoothstep of ``t`` clamped to 0..1: starts and ends gently."""
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to cover ``width`` x ``height`` and centre-cropped to it, in RGB."""
    image = image.convert("RGB")
    target = width / height
    if image.width / image.height > target:
        crop_w, crop_h = image.height * target, float(image.height)
    else:
        crop_w, crop_h = float(image.width), image.width / target
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def _planes(image: Image.Image) -> Planes:
    """``image`` (even width and height) as yuv420p planes."""
    frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
    y, u, v = (
        Image.frombuffer("L", (plane.line_size, plane.height), bytes(plane), "raw", "L", 0, 1).crop(
            (0, 0, plane.width, plane.height)
        )
        for plane in frame.planes
    )
    return y, u, v


def _frame(start: Planes, end: Planes | None, t: float, at: tuple[int, int], width: int, height: int) -> av.VideoFrame:
    """The frame at ``t`` (0 = first, 1 = last): the view of ``start`` at ``at`` (even x, y), faded into ``end``."""
    x, y = at
    view = [
        plane.crop((x // scale, y // scale, (x + width) // scale, (y + height) // scale))
        for plane, scale in zip(start, (1, 2, 2), strict=True)
    ]
    fade = 0.0 if end is None else _smooth((t - FADE[0]) / (FADE[1] - FADE[0]))
    if end is not None and fade > 0.0:
        view = [Image.blend(a, b, fade) for a, b in zip(view, end, strict=True)]
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, image in zip(frame.planes, view, strict=True):
        if plane.line_size != image.width:  # rows padded for alignment
            padded = Image.new("L", (plane.line_size, image.height))
            padded.paste(image)
            image = padded
        plane.update(image.tobytes())
    return frame
