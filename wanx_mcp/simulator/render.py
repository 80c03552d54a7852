"""The simulator's result video: an H.264 MP4 made from the submitted image(s).

``render_video`` fills the requested size with ``first`` (centre-cropped to the aspect ratio), pushes in
slowly with a slight pan and, when ``last`` is given, cross-fades into it so that the clip ends exactly on
``last``. Frames are drawn with Pillow at the target size and encoded with libx264 (ultrafast, yuv420p)
into an MP4 whose index (moov) comes first, so browsers can play it while it downloads.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction

import av
from PIL import Image

PUSH_IN = 0.10
"""How much narrower the view of ``first`` is at the end of the clip than at its start."""
PAN = 0.03
"""How far (as a fraction of the width) the view drifts sideways while pushing in."""
FADE = (0.35, 0.85)
"""The part of the clip (as fractions of its length) over which ``first`` cross-fades into ``last``."""
MARGIN = 1.15
"""The prepared source is this much larger than the frame, so that cropping into it stays sharp."""


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
    start = _fit(first, width, height)
    end = _fit(last, width, height) if last is not None else None
    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="wanx-render-")
    os.close(fd)
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.options = {"preset": "ultrafast", "crf": "23"}
            for index in range(count):
                image = _frame(start, end, index / max(count - 1, 1), width, height)
                frame = av.VideoFrame.from_image(image)
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        with open(path, "rb") as file:
            return file.read()
    finally:
        os.unlink(path)


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` centre-cropped to the frame's aspect ratio and scaled to ``MARGIN`` times the frame."""
    image = image.convert("RGB")
    target = width / height
    if image.width / image.height > target:
        crop_w, crop_h = image.height * target, float(image.height)
    else:
        crop_w, crop_h = float(image.width), image.width / target
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    size = (round(width * MARGIN), round(height * MARGIN))
    return image.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def _view(source: Image.Image, zoom: float, shift: float, width: int, height: int) -> Image.Image:
    """The part of ``source`` seen ``zoom`` times narrower than whole, moved ``shift`` widths right."""
    crop_w, crop_h = source.width / zoom, source.height / zoom
    left = (source.width - crop_w) / 2 + shift * source.width
    left = min(max(left, 0.0), source.width - crop_w)
    top = (source.height - crop_h) / 2
    return source.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def _frame(start: Image.Image, end: Image.Image | None, t: float, width: int, height: int) -> Image.Image:
    """The frame at ``t`` (0 = first frame, 1 = last): ``start`` pushed in, faded into ``end`` if any."""
    eased = _smooth(t)
    zoom, shift = 1 + PUSH_IN * eased, PAN * eased
    fade = 0.0 if end is None else _smooth((t - FADE[0]) / (FADE[1] - FADE[0]))
    if end is None or fade == 0.0:
        return _view(start, zoom, shift, width, height)
    # ``end`` settles from a slight push-in to the whole (fitted) image on the last frame.
    target = _view(end, 1 + PUSH_IN * (1 - eased) / 2, 0.0, width, height)
    return target if fade == 1.0 else Image.blend(_view(start, zoom, shift, width, height), target, fade)


def _smooth(t: float) -> float:
    """Smoothstep of ``t`` clamped to 0..1: starts and ends gently."""
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)
