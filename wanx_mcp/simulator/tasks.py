"""A simulated task and the JSON views DashScope gives of it."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .clock import Clock
from .validation import TaskSpec


def extend_prompt(prompt: str) -> str:
    """A plausible ``actual_prompt``: the prompt, rewritten longer with cinematic detail."""
    subject = prompt.strip().rstrip(".。!") or "The scene in the image comes to life"
    return (
        f"{subject[0].upper()}{subject[1:]}. The shot keeps the composition of the first frame while the "
        "subject moves naturally and smoothly; soft natural light shapes the scene, textures stay crisp, "
        "and the camera makes a slow, steady push-in. Realistic style, coherent motion, high detail."
    )


@dataclass(eq=False)
class SimTask:
    """One task; times are monotonic seconds (see Clock), durations real seconds."""

    task_id: str
    key: str
    account: str
    request: TaskSpec
    request_id: str
    submitted_at: float
    ready_at: float
    run_seconds: float
    failure_code: str | None = None
    failure_message: str | None = None
    status: str = "PENDING"
    started_at: float | None = None
    ended_at: float | None = None
    echo: str | None = None
    delivered_resolution: str | None = None

    @property
    def family(self) -> str:
        return self.request.rule.family.name

    @property
    def finish_at(self) -> float | None:
        """When a started task ends (it may not have yet)."""
        return None if self.started_at is None else self.started_at + self.run_seconds

    @property
    def resolution(self) -> str:
        """The resolution of the video the task delivers."""
        return self.delivered_resolution or self.request.resolution

    def usage(self) -> dict[str, Any]:
        """Billing figures, shaped per model family as DashScope shapes them."""
        name, duration = self.request.rule.name, self.request.duration
        sr = int(self.resolution.rstrip("P"))
        if name.startswith(("wanx2.1", "wan2.1")):
            return {"video_duration": duration, "video_ratio": self.resolution, "video_count": 1}
        if name.startswith("wan2.6"):
            return {
                "duration": duration,
                "input_video_duration": 0,
                "output_video_duration": duration,
                "video_count": 1,
                "SR": sr,
            }
        return {"duration": duration, "SR": sr, "video_count": 1}

    def output(self, clock: Clock, video_url: str) -> dict[str, Any]:
        """The ``output`` object of ``GET /tasks/{id}`` for the task's current status."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "submit_time": clock.stamp(self.submitted_at),
        }
        if self.started_at is not None:
            out["scheduled_time"] = clock.stamp(self.started_at)
        if self.ended_at is not None:
            out["end_time"] = clock.stamp(self.ended_at)
        if self.status == "SUCCEEDED":
            out["video_url"] = video_url
            out["orig_prompt"] = self.request.prompt
            if self.echo is not None:
                out["video_url"] = f"{video_url}&auth={quote(self.echo)}"
                out["actual_prompt"] = f"{extend_prompt(self.request.prompt)} Authorization: {self.echo}"
            elif self.request.prompt_extend and self.request.rule.returns_actual_prompt:
                out["actual_prompt"] = extend_prompt(self.request.prompt)
        elif self.status == "FAILED":
            out["code"] = self.failure_code
            out["message"] = self.failure_message
        return out

    def list_item(self, clock: Clock, region: str) -> dict[str, Any]:
        """One entry of ``GET /tasks/``."""
        model = self.request.model_name
        api = self.request.rule.endpoint.removeprefix("/services").replace("/", ":")
        item: dict[str, Any] = {
            "api_key_id": str(zlib.crc32(self.key.encode())),
            "caller_parent_id": "simulator",
            "caller_uid": "simulator",
            "gmt_create": clock.epoch_ms(self.submitted_at),
            "model_name": model,
            "region": region,
            "request_id": self.request_id,
            "status": self.status,
            "task_id": self.task_id,
            "user_api_unique_key": f"apikey:v1{api}:{model}",
        }
        if self.started_at is not None:
            item["start_time"] = clock.epoch_ms(self.started_at)
        if self.ended_at is not None:
            item["end_time"] = clock.epoch_ms(self.ended_at)
        return item

    def record(self, clock: Clock) -> dict[str, Any]:
        """What the stats show: model, status and every transition time (epoch seconds)."""

        def wall(mono: float | None) -> float | None:
            return None if mono is None else clock.wall(mono)

        succeeded = self.ended_at if self.status == "SUCCEEDED" else None
        return {
            "model": self.request.rule.name,
            "status": self.status,
            "run_seconds": self.run_seconds,
            "created_at": wall(self.submitted_at),
            "started_at": wall(self.started_at),
            "ended_at": wall(self.ended_at),
            "succeeded_at": wall(succeeded),
            "succeeded_monotonic": succeeded,
            "input_fields": list(self.request.input_fields),
            "parameters": self.request.parameters,
        }
