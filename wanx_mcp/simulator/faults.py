"""Injected faults: what the next requests of one kind will suffer.

A fault has a ``target`` (the request kind), a ``kind`` and a ``count`` (how many requests it hits), and
per kind ``seconds``, ``status``, ``code``, ``message`` or ``value``.
"Before" kinds strike as the request arrives, before anything is done; "after" kinds strike once the
request has done its work (a task created, a video found).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from .errors import CODE_FOR_STATUS, message_for

BEFORE = {
    "error": "answer `status` (default 500) with a DashScope JSON error `code`/`message` "
    "(defaults per status: 429 Throttling.RateQuota, 500 InternalError...; OSS XML on downloads)",
    "html_502": "answer 502 with an HTML body, as a proxy does",
    "drop": "cut the connection in the middle of the response",
    "delay": "wait `seconds` before handling the request (it is handled all the same)",
}
AFTER = {
    "accept_then_drop": "create the task, then cut the connection in the middle of the response",
    "accept_then_hang": "create the task, then wait `seconds` before answering",
    "task_failed": "the created task ends FAILED with `code` (default DataInspectionFailed) and `message`",
    "bad_task_id": "create the task, but answer with the task id `value` (e.g. '../../outside/x'): a hostile "
    "upstream; the task exists under its real id all the same (it is in the task list)",
    "echo_auth": "the created task echoes the request's Authorization header: without `code` it ends "
    "SUCCEEDED with the header in `actual_prompt` and in its `video_url`'s query (`auth=`); with `code` it "
    "ends FAILED with that code and the header in `message`",
    "wrong_resolution": "the created task delivers a video at resolution `value` (e.g. '720P') instead of the "
    "requested one (its MP4 and usage show it)",
    "truncate": "serve only the first half of the video's bytes, then cut the connection",
    "corrupt_video": "serve an MP4-looking body (it starts with an ftyp box) that does not decode",
    "endless": "stream video bytes forever (no Content-Length), in chunks, until the client stops",
}
KINDS = {**BEFORE, **AFTER}
ALLOWED = {
    "create": (
        *BEFORE,
        "accept_then_drop",
        "accept_then_hang",
        "task_failed",
        "bad_task_id",
        "echo_auth",
        "wrong_resolution",
    ),
    "get": (*BEFORE,),
    "cancel": (*BEFORE,),
    "list": (*BEFORE,),
    "download": (*BEFORE, "truncate", "corrupt_video", "endless"),
}
FIELDS = ("target", "kind", "count", "seconds", "status", "code", "message", "value")
RESOLUTIONS = ("480P", "720P", "1080P")


@dataclass
class Fault:
    """One injected fault; ``count`` is how many requests it will still hit."""

    target: str
    kind: str
    count: int = 1
    seconds: float = 0.0
    status: int | None = None
    code: str | None = None
    message: str | None = None
    value: str | None = None

    def __post_init__(self) -> None:
        if self.target not in ALLOWED:
            raise ValueError(f"unknown fault target {self.target!r}; targets: {', '.join(ALLOWED)}")
        if self.kind not in ALLOWED[self.target]:
            choices = ", ".join(ALLOWED[self.target])
            raise ValueError(f"fault {self.kind!r} does not apply to {self.target!r}; choose from: {choices}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, not {self.count}")
        if self.kind in ("delay", "accept_then_hang") and self.seconds <= 0:
            raise ValueError(f"fault {self.kind!r} needs seconds > 0")
        if self.kind == "error":
            self.status = self.status or 500
            if not 400 <= self.status <= 599:
                raise ValueError(f"status must be an HTTP error status (400-599), not {self.status}")
            self.code = self.code or CODE_FOR_STATUS.get(self.status, "InternalError")
        if self.kind == "task_failed":
            self.code = self.code or "DataInspectionFailed"
        if self.kind == "bad_task_id" and not self.value:
            raise ValueError("fault 'bad_task_id' needs the task id to answer with as value")
        if self.kind == "wrong_resolution" and self.value not in RESOLUTIONS:
            raise ValueError(f"fault 'wrong_resolution' needs value one of {', '.join(RESOLUTIONS)}")
        if self.code:
            self.message = self.message or message_for(self.code)

    @property
    def before(self) -> bool:
        return self.kind in BEFORE

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """A fault from its JSON form; ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError('a fault is a JSON object such as {"target": "create", "kind": "error"}')
        unknown = set(data) - set(FIELDS)
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ValueError(f"unknown fault fields: {names}; fields: {', '.join(FIELDS)}")
        if "target" not in data or "kind" not in data:
            raise ValueError("a fault needs a target and a kind")
        try:
            return cls(
                target=str(data["target"]),
                kind=str(data["kind"]),
                count=int(data.get("count", 1)),
                seconds=float(data.get("seconds", 0.0)),
                status=None if data.get("status") is None else int(data["status"]),
                code=None if data.get("code") is None else str(data["code"]),
                message=None if data.get("message") is None else str(data["message"]),
                value=None if data.get("value") is None else str(data["value"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fault: {exc}") from None


class FaultQueue:
    """Pending faults in the order they were injected; safe to use from any thread."""

    def __init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()

    def add(
        self,
        target: str,
        kind: str,
        *,
        count: int = 1,
        seconds: float = 0.0,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        value: str | None = None,
    ) -> Fault:
        """Make the next ``count`` ``target`` requests suffer ``kind`` (see KINDS); ValueError if invalid."""
        fault = Fault(
            target, kind, count=count, seconds=seconds, status=status, code=code, message=message, value=value
        )
        self.add_fault(fault)
        return fault

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, target: str, *, before: bool) -> Fault | None:
        """Use up one hit of the oldest ``target`` fault of the given stage, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.target == target and fault.before == before:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
            return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
