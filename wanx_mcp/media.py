"""What a downloaded video is: its facts (PyAV decodes every frame), a contact-sheet preview (Pillow draws
frames spread over the clip, with timestamps) cached beside it, and notes where it contradicts the request.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from PIL import Image, ImageDraw, ImageFont

from .tasks import Task, VideoFacts

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

#: Units per second of a container's duration (FFmpeg's AV_TIME_BASE, ``av.time_base``).
AV_TIME_BASE = 1_000_000

SHEET_FRAMES = 9
"""Frames on a contact sheet: first, middle and last among them (an odd number spreads evenly)."""
SHEET_COLUMNS = 3
TILE = 400
"""Longest side of one frame on the sheet, in pixels (smaller videos are not enlarged)."""
GAP = 4
JPEG_QUALITIES = (80, 65, 50)
MAX_PREVIEW_BYTES = 400 * 1024
"""A preview larger than this at one JPEG quality is encoded again at the next lower one."""
MAX_FRAMES = 20_000
"""Decoding stops here: no Wan video is anywhere near this long."""
SIZE_TOLERANCE = 0.02
"""How far (as a fraction) the short side may be from the lines the resolution names."""
DURATION_TOLERANCE = 0.5
"""Seconds the delivered duration may be from the asked one (or a tenth of it, if more)."""
RESOLUTION = re.compile(r"^(\d+)P$", re.IGNORECASE)


class VideoError(ValueError):
    """The file is not a playable video (does not open or decode)."""


@dataclass(frozen=True)
class Examined:
    """A decoded video: its facts and the frames picked for its contact sheet (time in s, image)."""

    facts: VideoFacts
    frames: list[tuple[float, Image.Image]]


def preview_path(video: Path) -> Path:
    """Where the contact sheet of ``video`` is cached: ``<task_id>.preview.jpg`` beside it."""
    return video.with_name(f"{video.stem}.preview.jpg")


def examine(path: Path, picks: int = SHEET_FRAMES) -> Examined:
    """Decode every frame of the video at ``path``: its facts and ``picks`` frames spread over it.

    Raises VideoError when it has no video stream, does not decode, or has fewer frames than it declares.
    """
    import av  # loaded with the first video, not with the server (about 65 ms of its start-up)

    try:
        with av.open(str(path)) as container:
            if "mp4" not in container.format.name.split(","):
                raise VideoError(f"not an MP4 ({container.format.name})")
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = stream.frames
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            seconds = _seconds(stream, container)
            expected = declared or max(round(seconds * fps), 1)
            wanted = _spread(expected, picks) - {expected - 1}  # the last frame decoded ends the sheet
            tile = _tile_size(stream.width, stream.height)
            frames: list[tuple[float, Image.Image]] = []
            count, last, origin = 0, None, 0.0
            for frame in container.decode(stream):
                if count == 0:  # times on the sheet count from the first frame
                    origin = _time(frame, 0, fps)
                if count in wanted:
                    frames.append((_time(frame, count, fps) - origin, _image(frame, tile)))
                count, last = count + 1, frame
                if count >= MAX_FRAMES:
                    break
            if last is None:
                raise VideoError("no frame decodes")
            if declared and count < declared and count < MAX_FRAMES:
                raise VideoError(f"only {count} of its {declared} frames decode")
            if count - 1 not in wanted:
                frames.append((_time(last, count - 1, fps) - origin, _image(last, tile)))
            facts = VideoFacts(
                width=stream.width, height=stream.height, duration_s=round(seconds or count / (fps or 1), 3),
                fps=round(fps, 3), codec=stream.codec_context.name, bytes=path.stat().st_size,
            )  # fmt: skip
    except av.FFmpegError as exc:  # its message would name the file: the reason only
        raise VideoError(f"it does not decode ({exc.strerror})") from exc
    except IndexError as exc:  # a damaged index (moov)
        raise VideoError("it does not decode (damaged index)") from exc
    return Examined(facts, frames)


def contact_sheet(frames: list[tuple[float, Image.Image]]) -> bytes:
    """A JPEG of ``frames`` in a grid of SHEET_COLUMNS, each with its time, at most MAX_PREVIEW_BYTES if it
    can be (else at the lowest quality tried)."""
    if not frames:
        raise ValueError("a contact sheet needs at least one frame")
    width, height = frames[0][1].size
    columns = min(SHEET_COLUMNS, len(frames))
    rows = math.ceil(len(frames) / columns)
    sheet = Image.new("RGB", (columns * width + (columns + 1) * GAP, rows * height + (rows + 1) * GAP), (24, 24, 24))
    draw = ImageDraw.Draw(sheet, "RGBA")
    font = ImageFont.load_default(size=max(10, min(width, height) // 14))
    for index, (seconds, image) in enumerate(frames):
        x = GAP + (index % columns) * (width + GAP)
        y = GAP + (index // columns) * (height + GAP)
        sheet.paste(image.resize((width, height)) if image.size != (width, height) else image, (x, y))
        label = f"{seconds:.1f} s"
        left, top, right, bottom = draw.textbbox((x + 6, y + 4), label, font=font)
        draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0, 150))
        draw.text((x + 6, y + 4), label, font=font, fill=(255, 255, 255))
    for quality in JPEG_QUALITIES:
        out = io.BytesIO()
        sheet.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= MAX_PREVIEW_BYTES:
            break
    return out.getvalue()


def mismatches(task: Task, facts: VideoFacts) -> list[str]:
    """Notes where the delivered video contradicts the request: the lines of its short side (the aspect
    ratio follows the image) or its duration."""
    notes = []
    named = RESOLUTION.match(task.resolution or "")
    short = min(facts.width, facts.height)
    if named and abs(short - int(named[1])) > int(named[1]) * SIZE_TOLERANCE:
        notes.append(
            f"resolution mismatch: {task.resolution} asked, {facts.width}x{facts.height} delivered ({short} lines)"
        )
    if task.duration and abs(facts.duration_s - task.duration) > max(DURATION_TOLERANCE, task.duration / 10):
        notes.append(f"duration mismatch: {task.duration} s asked, {facts.duration_s:g} s delivered")
    return notes


def with_facts(task: Task, facts: VideoFacts) -> Task:
    """``task`` with its video's ``facts`` and a note on each mismatch with the request (once)."""
    notes = [note for note in mismatches(task, facts) if note not in task.notes]
    return task.model_copy(update={"video": facts, "notes": [*task.notes, *notes]})


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, so ``path`` is never partial."""
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


class Media:
    """Examines downloaded videos and makes their previews in worker threads, ``workers`` at a time."""

    def __init__(self, workers: int = 1) -> None:
        self._limiter = anyio.CapacityLimiter(workers)

    async def check_download(self, part: Path, dest: Path) -> Callable[[Task], Task]:
        """The watcher's check of a finished download (``part``, soon renamed to ``dest``): the change to make
        to its task (``video`` facts, mismatch notes); the preview is written beside ``dest`` meanwhile.

        Raises VideoError when the file does not decode (a failed download, to be retried)."""
        examined = await anyio.to_thread.run_sync(examine, part, limiter=self._limiter)
        try:
            await anyio.to_thread.run_sync(self._save_preview, examined, dest, limiter=self._limiter)
        except OSError as exc:  # made again when asked for
            log.warning("could not save the preview of %s: %s", dest.name, exc)
        return functools.partial(with_facts, facts=examined.facts)

    async def preview(self, video: Path) -> bytes:
        """The contact sheet of ``video``: the cached one, else made now (and cached).

        Raises VideoError when the video does not decode, OSError when it cannot be read."""
        cached = anyio.Path(preview_path(video))
        if await cached.is_file():
            return await cached.read_bytes()
        examined = await anyio.to_thread.run_sync(examine, video, limiter=self._limiter)
        return await anyio.to_thread.run_sync(self._save_preview, examined, video, limiter=self._limiter)

    @staticmethod
    def _save_preview(examined: Examined, video: Path) -> bytes:
        sheet = contact_sheet(examined.frames)
        write_atomically(preview_path(video), sheet)
        return sheet


def _seconds(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / AV_TIME_BASE if container.duration else 0.0


def _spread(count: int, picks: int) -> set[int]:
    """``picks`` frame indices spread evenly over ``count`` frames, first and last included."""
    if count <= picks:
        return set(range(count))
    return {round(i * (count - 1) / (picks - 1)) for i in range(picks)}


def _tile_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, TILE / max(width, height, 1))
    return max(round(width * scale), 1), max(round(height * scale), 1)


def _time(frame: av.VideoFrame, index: int, fps: float) -> float:
    return float(frame.time) if frame.time is not None else index / (fps or 1)


def _image(frame: av.VideoFrame, size: tuple[int, int]) -> Image.Image:
    return frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
