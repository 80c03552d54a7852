"""Videos: the simulator's renderer, probing an MP4 for its facts, and the contact-sheet preview."""

from __future__ import annotations

import io

import av
import pytest
from PIL import Image

from wanx_mcp.simulator.render import render_video

RED, BLUE = (220, 30, 30), (20, 40, 220)


def mean_colour(image: Image.Image) -> tuple[int, ...]:
    return image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))


def close(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def decode(data: bytes) -> tuple[av.video.stream.VideoStream, float, list[Image.Image]]:
    """The video stream, the container's duration (s) and every frame of an MP4 held in memory."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return stream, container.duration / av.time_base, frames


# -- render_video ----------------------------------------------------------------------------------


def test_render_video_is_a_progressive_h264_mp4_of_the_image() -> None:
    first = Image.new("RGB", (640, 480), RED)
    data = render_video(first, None, width=480, height=272, seconds=2.0, fps=16)
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
    stream, duration, frames = decode(data)
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.width, stream.height, stream.average_rate) == (480, 272, 16)
    assert len(frames) == 32 and duration == pytest.approx(2.0, abs=0.07)
    assert all(frame.size == (480, 272) for frame in frames)
    assert close(mean_colour(frames[0]), RED) and close(mean_colour(frames[-1]), RED)


def test_render_video_moves_and_cross_fades_into_the_last_frame() -> None:
    # Left half red, right half blue: a push-in with a pan changes the picture between first and last.
    first = Image.new("RGB", (800, 400), RED)
    first.paste(Image.new("RGB", (400, 400), BLUE), (400, 0))
    last = Image.new("RGB", (300, 300), (30, 200, 40))
    _, duration, frames = decode(render_video(first, last, width=320, height=160, seconds=1.5, fps=10))
    assert len(frames) == 15 and duration == pytest.approx(1.5, abs=0.1) and frames[0].size == (320, 160)
    assert close(mean_colour(frames[0].crop((0, 0, 150, 160))), RED)
    assert close(mean_colour(frames[0].crop((170, 0, 320, 160))), BLUE)
    assert close(mean_colour(frames[-1]), (30, 200, 40))
    middle = mean_colour(frames[7])
    assert not close(middle, (30, 200, 40)) and not close(middle, mean_colour(frames[0]))


@pytest.mark.parametrize("size", [(481, 270), (480, 271), (0, 270)])
def test_render_video_refuses_odd_or_empty_sizes(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="even"):
        render_video(Image.new("RGB", (64, 64)), None, width=size[0], height=size[1], seconds=1, fps=16)


def test_render_video_refuses_a_clip_without_frames() -> None:
    with pytest.raises(ValueError, match="no frame"):
        render_video(Image.new("RGB", (64, 64)), None, width=64, height=64, seconds=0.01, fps=16)
