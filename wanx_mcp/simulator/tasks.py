"""A simulated task and the JSON views DashScope gives of it."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

from .clock import Clock
from .rules import find_rule
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
    """One task; times are epoch seconds (see Clock), durations real seconds."""

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
        """What the stats show: model, status, every transition time (epoch seconds) and what was sent."""
        succeeded = self.ended_at if self.status == "SUCCEEDED" else None
        return {
            "model": self.request.rule.name,
            "status": self.status,
            "run_seconds": self.run_seconds,
            "created_at": self.submitted_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "succeeded_at": succeeded,
            "succeeded_monotonic": None if succeeded is None else clock.mono(succeeded),
            "input_fields": list(self.request.input_fields),
            "parameters": self.request.parameters,
        }

    def to_row(self) -> dict[str, Any]:
        """The task as JSON-able data (its images are kept apart, see SimulatorState.images)."""
        row = {name: getattr(self, name) for name in TASK_FIELDS}
        row["request"] = {name: getattr(self.request, name) for name in SPEC_FIELDS}
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SimTask:
        spec = dict(row["request"])
        rule = find_rule(spec["model_name"])
        if rule is None:
            raise ValueError(f"unknown model {spec['model_name']!r} in the simulator's state file")
        spec["input_fields"] = tuple(spec["input_fields"])
        return cls(**{**row, "request": TaskSpec(rule=rule, **spec)})


TASK_FIELDS = tuple(f.name for f in fields(SimTask) if f.name != "request")
SPEC_FIELDS = tuple(f.name for f in fields(TaskSpec) if f.name not in ("rule", "images"))
