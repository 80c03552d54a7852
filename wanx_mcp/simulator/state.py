"""The simulator's memory: tasks and their lifecycle, rate limits, faults and statistics.

Transitions are computed, not polled: every call first advances all tasks to "now" by replaying the
starts and ends that fell due, earliest first, so each task's end time is exact whenever anyone looks.
Thread-safe: the server thread and the test (or embedding) thread share one state.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock
from .config import SimulatorConfig
from .errors import ApiError, invalid, message_for
from .faults import Fault, FaultQueue
from .rules import FIRST_FRAME
from .tasks import SimTask
from .validation import validate_create

RATE_WINDOW = 1.0
LIST_WINDOW = 24 * 3600.0
LOG_SIZE = 1000
COUNTS = ("creates_received", "tasks_created", "status_gets", "cancels", "lists", "downloads", "throttled")
REQUEST_AGENT: ContextVar[str | None] = ContextVar("REQUEST_AGENT", default=None)
STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")


def _finish(task: SimTask) -> float:
    return math.inf if task.finish_at is None else task.finish_at


@dataclass
class _Lane:
    """The tasks of one account and one rate-limit family, which share its running slots."""

    slots: int
    pending: deque[SimTask] = field(default_factory=deque)
    running: list[SimTask] = field(default_factory=list)
    last_event: float = -math.inf

    def advance(self, now: float, *, hold: bool) -> None:
        """Apply every end (and, unless ``hold``, every start) due by ``now``, earliest first."""
        while True:
            ending = min(self.running, key=_finish, default=None)
            end_at = _finish(ending) if ending else math.inf
            can_start = self.pending and len(self.running) < self.slots and not hold
            head = self.pending[0] if can_start else None
            start_at = max(head.ready_at, self.last_event) if head else math.inf
            if min(end_at, start_at) > now:
                return
            if ending and end_at <= start_at:
                self.running.remove(ending)
                ending.ended_at = end_at
                ending.status = "FAILED" if ending.failure_code else "SUCCEEDED"
                self.last_event = end_at
            elif head:
                self.pending.popleft()
                head.started_at = start_at
                head.status = "RUNNING"
                self.running.append(head)
                self.last_event = start_at


class SimulatorState:
    """Everything one simulator knows; ``faults`` takes injected faults."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.clock = Clock(self.config.utc_offset_hours)
        self.faults = FaultQueue()
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every task, fault, count and logged request; back to the config's hold setting."""
        with self._lock:
            self._tasks: dict[str, SimTask] = {}
            self._lanes: dict[tuple[str, str], _Lane] = {}
            self._windows: dict[tuple[str, str], deque[float]] = {}
            self._counts: Counter[str] = Counter()
            self._requests: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
            self._rng = random.Random(self.config.seed)
            self._hold = self.config.hold_pending
            self.faults.clear()

    @property
    def hold_pending(self) -> bool:
        """While True no task leaves PENDING; set it False and they start from that moment."""
        return self._hold

    @hold_pending.setter
    def hold_pending(self, hold: bool) -> None:
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            if self._hold and not hold:
                for lane in self._lanes.values():
                    lane.last_event = max(lane.last_event, now)
            self._hold = hold

    def count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def log_request(self, method: str, path: str, status: int | str) -> None:
        """Log one answered request; its User-Agent is read from ``REQUEST_AGENT`` (set per request)."""
        entry = {"method": method, "path": path, "status": status, "agent": REQUEST_AGENT.get(), "at": time.time()}
        with self._lock:
            self._requests.append(entry)
            if status == 429:
                self._counts["throttled"] += 1

    def stats(self) -> dict[str, Any]:
        """Request counts (``creates_received``..., ``throttled``: 429s answered), ``requests`` (the latest
        1000: method, path, status, agent (User-Agent), at (epoch seconds)),
        ``tasks`` (task id -> model, status, transition times) and the pending ``faults``."""
        with self._lock:
            self._advance(self.clock.now())
            return {
                **{kind: self._counts[kind] for kind in COUNTS},
                "requests": list(self._requests),
                "tasks": {task_id: task.record(self.clock) for task_id, task in self._tasks.items()},
                "faults": self.faults.pending(),
                "hold_pending": self._hold,
            }

    def authorized(self, key: str) -> bool:
        return self.config.accepts(key)

    def create(
        self, key: str, body: Any, endpoint: str = FIRST_FRAME, *, authorization: str = ""
    ) -> tuple[SimTask, Fault | None]:
        """A new task for ``body`` posted to ``endpoint`` with ``key`` and the after-create fault it drew;
        ApiError on 400 and 429. ``authorization`` is the request's header, for the ``echo_auth`` fault."""
        request = validate_create(body, endpoint)
        account = self.config.account(key)
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            family = request.rule.family.name
            limits = self.config.rate_limit(family)
            window = self._windows.setdefault((account, family), deque())
            while window and window[0] <= now - RATE_WINDOW:
                window.popleft()
            if len(window) >= limits.submissions_per_second:
                raise ApiError(429, "Throttling.RateQuota")
            window.append(now)
            jitter = self._rng.uniform(0.8, 1.2) if self.config.jitter else 1.0
            rule = request.rule
            simulated = rule.typical_seconds * request.duration / rule.default_duration * jitter
            task = SimTask(
                task_id=str(uuid.uuid4()),
                key=key,
                account=account,
                request=request,
                request_id=str(uuid.uuid4()),
                submitted_at=now,
                ready_at=now + self.config.real_seconds(self.config.schedule_delay),
                run_seconds=self.config.real_seconds(simulated),
            )
            fault = self.faults.take("create", before=False)
            if fault and fault.kind == "task_failed":
                task.failure_code, task.failure_message = fault.code, fault.message
            elif fault and fault.kind == "echo_auth":
                task.echo = authorization
                if fault.code:
                    task.failure_code, task.failure_message = fault.code, f"{fault.message} ({authorization})"
            elif fault and fault.kind == "wrong_resolution":
                task.delivered_resolution = fault.value
            elif code := request.marker_code:
                task.failure_code, task.failure_message = code, message_for(code)
            self._tasks[task.task_id] = task
            lane = self._lanes.setdefault((account, family), _Lane(slots=limits.running_tasks))
            lane.pending.append(task)
            lane.advance(now, hold=self._hold)
            self._counts["tasks_created"] += 1
            return task, fault

    def get(self, key: str, task_id: str) -> SimTask | None:
        """The task as it is now, or None when it does not exist for this key's account or has expired."""
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            task = self._tasks.get(task_id)
            if task is None or task.account != self.config.account(key) or self._expired(task.submitted_at, now):
                return None
            return task

    def cancel(self, key: str, task_id: str) -> None:
        """Cancel a PENDING task; ApiError(400 UnsupportedOperation) for any other."""
        with self._lock:
            task = self.get(key, task_id)
            if task is None or task.status != "PENDING":
                raise ApiError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
            self._lanes[(task.account, task.family)].pending.remove(task)
            task.status = "CANCELED"
            task.ended_at = self.clock.now()

    def list_tasks(self, key: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET /tasks/`` for ``key``'s account: filtered, newest first, paged; ApiError on bad parameters."""
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            try:
                parse = self.clock.parse_compact
                end = parse(query["end_time"]) if query.get("end_time") else now
                start = parse(query["start_time"]) if query.get("start_time") else end - LIST_WINDOW
                page_no, page_size = int(query.get("page_no") or 1), int(query.get("page_size") or 10)
            except ValueError:
                raise invalid(
                    "start_time and end_time must be YYYYMMDDhhmmss, page_no and page_size integers."
                ) from None
            if page_no < 1 or page_size < 1:
                raise invalid("page_no and page_size must be at least 1.")
            if end - start > LIST_WINDOW:
                raise invalid("The interval between start_time and end_time cannot exceed 24 hours.")
            status = (query.get("status") or "").upper()
            if status and status not in STATUSES:
                raise invalid(f"The parameter status must be one of {', '.join(STATUSES)}.")
            matches = [
                task
                for task in self._tasks.values()
                if task.account == self.config.account(key)
                and not self._expired(task.submitted_at, now)
                and start <= task.submitted_at <= end
                and query.get("task_id") in (None, "", task.task_id)
                and query.get("model_name") in (None, "", task.request.model_name, task.request.rule.name)
                and status in ("", task.status)
            ]
            matches.sort(key=lambda task: task.submitted_at, reverse=True)
            return {
                "total": len(matches),
                "total_page": math.ceil(len(matches) / page_size),
                "page_no": page_no,
                "page_size": page_size,
                "data": [
                    task.list_item(self.clock, self.config.region)
                    for task in matches[(page_no - 1) * page_size : page_no * page_size]
                ],
            }

    def video_task(self, task_id: str) -> SimTask | None:
        """The SUCCEEDED task whose video this is, expired or not (None: there is no such video)."""
        with self._lock:
            self._advance(self.clock.now())
            task = self._tasks.get(task_id)
            return task if task is not None and task.status == "SUCCEEDED" else None

    def video_expires_at(self, task: SimTask) -> float:
        """The monotonic instant after which the task's video URL answers 403."""
        ended = task.submitted_at if task.ended_at is None else task.ended_at
        return ended + self.config.real_seconds(self.config.expiry_seconds)

    def _advance(self, now: float) -> None:
        for lane in self._lanes.values():
            lane.advance(now, hold=self._hold)

    def _expired(self, since: float, now: float) -> bool:
        return now > since + self.config.real_seconds(self.config.expiry_seconds)
