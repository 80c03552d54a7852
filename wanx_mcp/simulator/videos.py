"""The result video of a task: rendered from its submitted image(s) once, on first download, then cached.

Size rule: the short side is the resolution's number (480/720/1080) and the long side follows the first
frame's aspect ratio, rounded to an even number (16:9 at 480P gives 854x480; Wan itself gives 832x480);
then ``SimulatorConfig.render_scale`` shrinks both sides (again to even numbers) to keep tests fast. Images
given as http(s) or oss:// URLs cannot be fetched offline: a neutral 16:9 placeholder frame stands in.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable

from PIL import Image, ImageDraw

from .render import render_video
from .validation import data_uri_bytes

PLACEHOLDER_SIZE = (320, 180)
CACHE_SIZE = 16


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def frame_size(resolution: str, aspect: float, scale: float = 1.0) -> tuple[int, int]:
    """Width and height of a video at ``resolution`` (e.g. "720P") for a first frame of ``aspect`` (w/h)."""
    short = int(resolution.rstrip("P"))
    long = _even(short * max(aspect, 1 / aspect))
    width, height = (long, short) if aspect >= 1 else (short, long)
    return _even(width * scale), _even(height * scale)


def placeholder(shade: int) -> Image.Image:
    """A neutral grey frame with a soft diagonal band, so that motion stays visible."""
    image = Image.new("RGB", PLACEHOLDER_SIZE, (shade, shade, shade))
    width, height = PLACEHOLDER_SIZE
    ImageDraw.Draw(image).polygon(
        [(width * 0.3, 0), (width * 0.5, 0), (width * 0.7, height), (width * 0.5, height)],
        fill=(shade + 24, shade + 24, shade + 24),
    )
    return image


def picture(url: str, shade: int, bound: tuple[int, int]) -> Image.Image:
    """The image a data URI holds (reduced to about ``bound``), else a placeholder of ``shade``."""
    try:
        data = data_uri_bytes(url)
        if data is None:
            return placeholder(shade)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", bound)
            image.thumbnail(bound)
            return image.convert("RGB")
    except (ValueError, OSError, Image.DecompressionBombError):
        return placeholder(shade)


def render_task(images: dict[str, str], resolution: str, seconds: float, *, fps: int, scale: float) -> bytes:
    """The MP4 of a task with these input ``images`` (by field) delivering ``resolution``."""
    first_url = images.get("img_url") or images.get("first_frame_url") or ""
    bound = (2 * 1920, 2 * 1920)
    first = picture(first_url, 128, bound)
    last = picture(images["last_frame_url"], 80, bound) if "last_frame_url" in images else None
    width, height = frame_size(resolution, first.width / first.height, scale)
    return render_video(first, last, width=width, height=height, seconds=seconds, fps=fps)


class VideoCache:
    """The latest rendered videos by task id; each is rendered once even when asked for concurrently."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._videos: OrderedDict[str, bytes] = OrderedDict()
        self._rendering: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, task_id: str, make: Callable[[], bytes]) -> bytes:
        """The cached video of ``task_id``, made by ``make`` (in this thread) if it is not cached yet."""
        with self._lock:
            if (video := self._videos.get(task_id)) is not None:
                self._videos.move_to_end(task_id)
                return video
            rendering = self._rendering.setdefault(task_id, threading.Lock())
        with rendering:
            with self._lock:
                if (video := self._videos.get(task_id)) is not None:
                    return video
            video = make()
            with self._lock:
                self._videos[task_id] = video
                while len(self._videos) > self._size:
                    self._videos.popitem(last=False)
                self._rendering.pop(task_id, None)
        return video
