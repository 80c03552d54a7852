"""Videos: the simulator's renderer, probing an MP4 for its facts, and the contact-sheet preview."""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest
from PIL import Image

from wanx_mcp.media import (
    GAP,
    MAX_PREVIEW_BYTES,
    SHEET_FRAMES,
    Media,
    VideoError,
    contact_sheet,
    examine,
    mismatches,
    preview_path,
)
from wanx_mcp.simulator.render import render_video
from wanx_mcp.tasks import Status, Task, VideoFacts

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


# -- examine: the facts of a video, and what does not decode ---------------------------------------


@pytest.fixture(scope="module")
def red_to_blue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 480P-like 2 s clip at 16 fps that starts red and cross-fades into blue."""
    path = tmp_path_factory.mktemp("videos") / "red-to-blue.mp4"
    path.write_bytes(render_video(Image.new("RGB", (640, 480), RED), Image.new("RGB", (640, 480), BLUE),
                                  width=416, height=240, seconds=2.0, fps=16))  # fmt: skip
    return path


def test_examine_reports_the_facts_of_the_file(red_to_blue: Path) -> None:
    examined = examine(red_to_blue)
    assert examined.facts == VideoFacts(
        width=416, height=240, duration_s=2.0, fps=16.0, codec="h264", bytes=red_to_blue.stat().st_size
    )
    times = [seconds for seconds, _ in examined.frames]
    assert len(times) == SHEET_FRAMES and times[0] == 0.0 and times[-1] == pytest.approx(31 / 16)
    assert times == sorted(times) and 1.0 in times  # first, middle and last among them


def damaged(data: bytes) -> dict[str, bytes]:
    mdat, moov = data.index(b"mdat"), data.index(b"moov")
    flipped = bytearray(data)
    for index in range(mdat + 64, len(flipped), 40):
        flipped[index] ^= 0xFF
    no_index = bytearray(data)
    no_index[moov + 8 : moov + 200] = bytes(192)
    return {
        "truncated": data[: len(data) // 2],
        "bit flips": bytes(flipped),
        "ftyp then noise": data[:32] + bytes(range(256)) * 20,
        "damaged index": bytes(no_index),
        "empty": b"",
    }


@pytest.mark.parametrize("kind", ["truncated", "bit flips", "ftyp then noise", "damaged index", "empty"])
def test_examine_refuses_a_video_that_does_not_decode(kind: str, red_to_blue: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(damaged(red_to_blue.read_bytes())[kind])
    with pytest.raises(VideoError):
        examine(path)


def test_examine_refuses_an_mp4_without_video_and_what_is_no_mp4(tmp_path: Path) -> None:
    sound = tmp_path / "sound.mp4"
    with av.open(str(sound), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.planes[0].update(bytes(4096))
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream"):
        examine(sound)
    still = tmp_path / "still.mp4"
    Image.new("RGB", (64, 64), RED).save(still, "PNG")
    with pytest.raises(VideoError, match="not an MP4"):
        examine(still)


# -- the contact sheet -----------------------------------------------------------------------------


def test_contact_sheet_shows_the_clip_from_first_to_last_frame(red_to_blue: Path) -> None:
    sheet = contact_sheet(examine(red_to_blue).frames)
    image = Image.open(io.BytesIO(sheet))
    assert image.format == "JPEG" and len(sheet) < MAX_PREVIEW_BYTES
    assert image.size == (3 * 400 + 4 * GAP, 3 * 231 + 4 * GAP)  # 3 x 3 frames of 400 x 231
    tile = (GAP + 40, GAP + 60, GAP + 360, GAP + 220)  # inside the first frame, below its timestamp
    last = (2 * 404 + GAP + 40, 2 * 235 + GAP + 60, 2 * 404 + GAP + 360, 2 * 235 + GAP + 220)
    assert close(mean_colour(image.crop(tile)), RED, 16) and close(mean_colour(image.crop(last)), BLUE, 16)
    label = image.crop((GAP, GAP, GAP + 60, GAP + 30)).convert("L")
    assert label.getextrema()[1] > 200  # the white timestamp on the first frame


def test_contact_sheet_of_a_large_detailed_video_stays_under_the_cap(tmp_path: Path) -> None:
    noise = Image.effect_noise((1280, 720), 120).convert("RGB")
    path = tmp_path / "noise.mp4"
    path.write_bytes(render_video(noise, None, width=1280, height=720, seconds=0.5, fps=16))
    sheet = contact_sheet(examine(path).frames)
    assert len(sheet) <= MAX_PREVIEW_BYTES and Image.open(io.BytesIO(sheet)).size == (1216, 691)


# -- mismatches with the request -------------------------------------------------------------------


def facts(width: int, height: int, seconds: float) -> VideoFacts:
    return VideoFacts(width=width, height=height, duration_s=seconds, fps=16, codec="h264", bytes=1000)


@pytest.mark.parametrize(
    ("resolution", "duration", "delivered", "expected"),
    [
        ("480P", 5, facts(832, 480, 5.06), []),
        ("480P", 5, facts(480, 832, 5.0), []),  # a portrait image gives a portrait video
        ("1080P", 5, facts(1920, 1088, 5.0), []),  # coded height: within the tolerance
        ("1080P", 5, facts(1280, 720, 5.0), ["resolution mismatch: 1080P asked, 1280x720 delivered (720 lines)"]),
        ("720P", 5, facts(1280, 720, 3.0), ["duration mismatch: 5 s asked, 3 s delivered"]),
        ("720P", 10, facts(1280, 720, 9.3), []),  # a tenth of 10 s
        (None, None, facts(320, 240, 1.0), []),
    ],
)
def test_mismatches_name_what_contradicts_the_request(
    resolution: str | None, duration: int | None, delivered: VideoFacts, expected: list[str]
) -> None:
    task = Task(task_id="t-12345678", status=Status.SUCCEEDED, model="m", resolution=resolution, duration=duration)
    assert mismatches(task, delivered) == expected


# -- Media: the watcher's check and the cached preview ---------------------------------------------


@pytest.mark.anyio
async def test_check_download_records_facts_notes_and_the_preview(red_to_blue: Path, tmp_path: Path) -> None:
    part, dest = tmp_path / ".t-12345678.mp4.part", tmp_path / "t-12345678.mp4"
    part.write_bytes(red_to_blue.read_bytes())
    task = Task(task_id="t-12345678", status=Status.SUCCEEDED, model="m", resolution="720P", duration=5,
                notes=["prompt shortened"])  # fmt: skip
    checked = (await Media().check_download(part, dest))(task)
    assert checked.video == examine(red_to_blue).facts
    assert checked.notes == [
        "prompt shortened",
        "resolution mismatch: 720P asked, 416x240 delivered (240 lines)",
        "duration mismatch: 5 s asked, 2 s delivered",
    ]
    assert preview_path(dest) == tmp_path / "t-12345678.preview.jpg"
    assert Image.open(preview_path(dest)).format == "JPEG" and not dest.exists()
    again = (await Media().check_download(part, dest))(checked)
    assert again.notes == checked.notes  # examined again (e.g. a new download): no repeated notes


@pytest.mark.anyio
async def test_check_download_refuses_what_does_not_decode(red_to_blue: Path, tmp_path: Path) -> None:
    part, dest = tmp_path / ".t-12345678.mp4.part", tmp_path / "t-12345678.mp4"
    part.write_bytes(red_to_blue.read_bytes()[:5000])
    with pytest.raises(VideoError):
        await Media().check_download(part, dest)
    assert not preview_path(dest).exists()


@pytest.mark.anyio
async def test_preview_is_made_once_and_cached_beside_the_video(red_to_blue: Path, tmp_path: Path) -> None:
    video = tmp_path / "t-12345678.mp4"
    video.write_bytes(red_to_blue.read_bytes())
    media = Media()
    sheet = await media.preview(video)
    assert preview_path(video).read_bytes() == sheet and Image.open(io.BytesIO(sheet)).format == "JPEG"
    video.write_bytes(b"")  # the cached sheet is served; the video is not decoded again
    assert await media.preview(video) == sheet
    preview_path(video).unlink()
    with pytest.raises(VideoError):
        await media.preview(video)
