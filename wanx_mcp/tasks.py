"""The Task record: what callers get back for every generation (fields named in shared/CONTRACT.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from .errors import AGENT, Surface, hint


class Status(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self not in (Status.PENDING, Status.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, to the millisecond."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00"))


class VideoFacts(BaseModel):
    """What the saved MP4 turned out to be (probed after download)."""

    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    duration_s: float = Field(description="seconds")
    fps: float = Field(description="frames per second")
    codec: str = Field(description="video codec, e.g. h264")
    bytes: int = Field(description="file size")


class Task(BaseModel):
    """One video generation as wanx-mcp knows it."""

    task_id: str = Field(description="DashScope task id (valid upstream for 24 hours)")
    status: Status = Field(description="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED or UNKNOWN")
    model: str
    prompt: str | None = None
    negative_prompt: str | None = None
    template: str | None = None
    resolution: str | None = None
    duration: int | None = None
    image: str | None = Field(None, description="where the first frame came from (never the image data)")
    last_frame: str | None = Field(None, description="where the last frame came from (never the image data)")
    created_at: str | None = Field(None, description="ISO 8601 UTC")
    updated_at: str | None = Field(None, description="ISO 8601 UTC: last time the status was confirmed upstream")
    finished_at: str | None = Field(None, description="ISO 8601 UTC")
    video_url: str | None = Field(None, description="DashScope's link to the MP4; expires 24 hours after generation")
    video_url_expires_at: str | None = Field(None, description="ISO 8601 UTC")
    video_path: str | None = Field(None, description="the downloaded MP4 on this machine, once downloaded")
    video: VideoFacts | None = Field(None, description="size, length, frame rate and codec of the saved video")
    video_link: str | None = Field(
        None, description="HTTP transport: this server's own signed link to the saved MP4 (valid 24 h; range requests)"
    )
    preview_link: str | None = Field(None, description="HTTP transport: this server's signed link to the preview image")
    orig_prompt: str | None = None
    actual_prompt: str | None = Field(None, description="the prompt after DashScope's rewrite (prompt_extend)")
    usage: dict[str, Any] | None = Field(None, description="billing usage as DashScope reports it")
    estimated_cost_cny: float | None = Field(None, description="duration x the Beijing price per second")
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    notes: list[str] = Field(default_factory=list, description="what wanx-mcp changed or noticed")
    hint: str | None = Field(None, description="what to do next")

    @property
    def is_final(self) -> bool:
        return self.status.is_final


def hint_for(task: Task, seconds_left: float | None = None, surface: Surface = AGENT) -> str:
    """One sentence telling the reader (an agent unless ``surface`` says otherwise) what to do next with ``task``."""
    if not task.is_final:
        left = f" (about {int(seconds_left)} s left)" if seconds_left else ""
        if surface.cli:
            return (
                f"The video is still being generated{left}; the task is journaled. "
                f"{surface.wait_for(task.task_id)} to wait for it and download the video."
            )
        return (
            f"The video is still being generated{left}; the server keeps watching it and will download it. "
            f"{surface.wait_for(task.task_id)} to wait for the result."
        )
    if task.status is Status.SUCCEEDED:
        if task.video_path:
            return f"Done: the video is saved at {task.video_path}."
        return (
            f"Done: download the video from video_url before it expires at {task.video_url_expires_at}"
            " (automatic download is off or failed; see notes)."
        )
    if task.status is Status.CANCELED:
        return "The task was cancelled before it started; nothing was billed."
    if task.status is Status.UNKNOWN:
        return (
            "DashScope does not know this task id: it is mistyped, from another account or region,"
            " or older than 24 h."
        )
    fallback = "The generation failed (not billed); try again, perhaps with another prompt."
    return hint(task.error_code or "", surface) or fallback
