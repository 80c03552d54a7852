"""The simulator's memory: tasks and their lifecycle, rate limits, faults and statistics.

Transitions are computed, not polled: every call first advances all tasks to "now" by replaying the
starts and ends that fell due, earliest first, so each task's end time is exact whenever anyone looks.
Thread-safe: the server thread and the test (or embedding) thread share one state.

With ``SimulatorConfig.state_path`` the tasks, their images, running slots and submission windows live in
a SQLite file (store.py) that several simulator processes may share, as DashScope remembers tasks for 24 h:
every call reads the file's latest state under its lock and writes its changes back. Counts, the request
log, faults and ``hold_pending`` stay per process.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock
from .config import SimulatorConfig
from .errors import ApiError, invalid, message_for
from .faults import Fault, FaultQueue
from .rules import FIRST_FRAME
from .store import StateFile
from .tasks import SimTask
from .validation import validate_create

RATE_WINDOW = 1.0
#: Seconds a submission's arrival is kept for the rate check (requests may be checked a little after arriving).
KEPT_ARRIVALS = 10 * RATE_WINDOW
LIST_WINDOW = 24 * 3600.0
LOG_SIZE = 1000
COUNTS = ("creates_received", "tasks_created", "status_gets", "cancels", "lists", "downloads", "throttled")
REQUEST_AGENT: ContextVar[str | None] = ContextVar("REQUEST_AGENT", default=None)
STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
PRUNE_AFTER = 60.0
FINAL = ("SUCCEEDED", "FAILED", "CANCELED")
LaneKey = tuple[str, str]


def _finish(task: SimTask) -> float:
    return math.inf if task.finish_at is None else task.finish_at


@dataclass
class _Lane:
    """The tasks of one account and one rate-limit family, which share its running slots and its
    submissions per second (``submitted``: the times of the latest ones)."""

    slots: int
    pending: deque[SimTask] = field(default_factory=deque)
    running: list[SimTask] = field(default_factory=list)
    last_event: float = -math.inf
    submitted: deque[float] = field(default_factory=deque)

    def advance(self, now: float, *, hold: bool, changed: set[str]) -> None:
        """Apply every end (and, unless ``hold``, every start) due by ``now``, earliest first; add the ids of
        the tasks that changed to ``changed``."""
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
                changed.add(ending.task_id)
                self.last_event = end_at
            elif head:
                self.pending.popleft()
                head.started_at = start_at
                head.status = "RUNNING"
                changed.add(head.task_id)
                self.running.append(head)
                self.last_event = start_at

    def row(self) -> dict[str, Any]:
        return {"last_event": self.last_event, "submitted": list(self.submitted)}


def _lane_name(key: LaneKey) -> str:
    return json.dumps(list(key))


class SimulatorState:
    """Everything one simulator knows; ``faults`` takes injected faults."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.clock = Clock(self.config.utc_offset_hours)
        self.faults = FaultQueue()
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self._file = None if self.config.state_path is None else StateFile(self.config.state_path)
        self._version = -1
        self._in_session = False
        self._forget()
        self._forget_local()

    def _forget(self) -> None:
        self._tasks: dict[str, SimTask] = {}
        self._lanes: dict[LaneKey, _Lane] = {}
        self._images: dict[str, dict[str, str]] = {}
        self._changed: set[str] = set()
        self._saved_lanes: dict[LaneKey, dict[str, Any]] = {}

    def _forget_local(self) -> None:
        self._counts: Counter[str] = Counter()
        self._requests: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._rng = random.Random(self.config.seed)
        self._hold = self.config.hold_pending
        self.faults.clear()

    def reset(self) -> None:
        """Forget every task (in the state file too), fault, count and logged request; back to the config's
        hold setting."""
        with self._lock:
            if self._file is not None:
                with self._file.transaction():
                    self._file.clear()
                    self._version = self._file.bump()
            self._forget()
            self._forget_local()

    @contextmanager
    def _session(self) -> Iterator[float]:
        """Hold the state (and the state file's lock), advanced to now; save what changed at the end, also
        when the block raises ApiError (an answer, not a failure)."""
        with self._lock:
            if self._file is None or self._in_session:
                now = self.clock.now()
                self._advance(now)
                yield now
                return
            self._in_session = True
            try:
                with self._file.transaction():
                    if self._file.version() != self._version:
                        self._load()
                    now = self.clock.now()
                    self._advance(now)
                    try:
                        yield now
                    except ApiError as exc:
                        answer: ApiError | None = exc
                    else:
                        answer = None
                    self._save(now)
            except BaseException:
                self._version = -1  # memory may now be ahead of the file: reload next time
                raise
            finally:
                self._in_session = False
            if answer is not None:
                raise answer

    def _load(self) -> None:
        assert self._file is not None
        self._forget()
        for row in self._file.tasks():
            task = SimTask.from_row(row)
            self._tasks[task.task_id] = task
        for name, row in self._file.lanes().items():
            account, family = json.loads(name)
            lane = self._lane(account, family)
            lane.last_event, lane.submitted = row["last_event"], deque(row["submitted"])
            self._saved_lanes[(account, family)] = row
        for task in sorted(self._tasks.values(), key=lambda task: task.submitted_at):
            if task.status in ("PENDING", "RUNNING"):
                lane = self._lane(task.account, task.family)
                (lane.pending.append if task.status == "PENDING" else lane.running.append)(task)
        self._version = self._file.version()

    def _save(self, now: float) -> None:
        assert self._file is not None
        gone = self._prune(now)
        changed = [(task_id, self._tasks[task_id].to_row()) for task_id in self._changed if task_id in self._tasks]
        self._changed.clear()
        changed_lanes = []
        for key, lane in self._lanes.items():
            if (row := lane.row()) != self._saved_lanes.get(key):
                changed_lanes.append((key, row))
                self._saved_lanes[key] = row
        if not (gone or changed or changed_lanes or self._images):
            return
        self._file.drop_tasks(gone)
        self._file.put_tasks((task_id, json.dumps(row)) for task_id, row in changed)
        self._file.put_lanes((_lane_name(key), json.dumps(row)) for key, row in changed_lanes)
        for task_id, images in self._images.items():
            self._file.put_images(task_id, images)
        self._images.clear()
        self._version = self._file.bump()

    def _prune(self, now: float) -> list[str]:
        """Forget final tasks whose video expired one lifetime (at least a minute) ago: their ids and links
        are long dead."""
        lifetime = max(self.config.real_seconds(self.config.expiry_seconds), PRUNE_AFTER)
        gone = [
            task_id
            for task_id, task in self._tasks.items()
            if task.status in FINAL and now > self.video_expires_at(task) + lifetime
        ]
        for task_id in gone:
            del self._tasks[task_id]
            self._images.pop(task_id, None)
        return gone

    def _lane(self, account: str, family: str) -> _Lane:
        slots = self.config.rate_limit(family).running_tasks
        return self._lanes.setdefault((account, family), _Lane(slots=slots))

    @property
    def hold_pending(self) -> bool:
        """While True no task leaves PENDING; set it False and they start from that moment."""
        return self._hold

    @hold_pending.setter
    def hold_pending(self, hold: bool) -> None:
        with self._session() as now:
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
        1000: method, path, status, agent (User-Agent), at (epoch seconds)), ``tasks`` (task id -> model,
        status, transition times, ``input_fields`` and ``parameters`` sent) and the pending ``faults``."""
        with self._session():
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
        self, key: str, body: Any, endpoint: str = FIRST_FRAME, *, authorization: str = "",
        arrived: float | None = None,
    ) -> tuple[SimTask, Fault | None]:
        """A new task for ``body`` posted to ``endpoint`` with ``key`` and the after-create fault it drew;
        ApiError on 400 and 429. ``authorization`` is the request's header, for the ``echo_auth`` fault.
        ``arrived``: when the request came in, which is what the submissions per second count (a gateway's
        view), not when its body was read and checked here."""  # fmt: skip
        request = validate_create(body, endpoint)
        account = self.config.account(key)
        with self._session() as now:
            family = request.rule.family.name
            lane = self._lane(account, family)
            arrived = now if arrived is None else min(arrived, now)
            while lane.submitted and lane.submitted[0] <= now - KEPT_ARRIVALS:
                lane.submitted.popleft()
            if not _fits(lane.submitted, arrived, self.config.rate_limit(family).submissions_per_second):
                raise ApiError(429, "Throttling.RateQuota")
            bisect.insort(lane.submitted, arrived)
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
            if self._file is not None:
                self._images[task.task_id] = request.images
            lane.pending.append(task)
            self._changed.add(task.task_id)
            lane.advance(now, hold=self._hold, changed=self._changed)
            self._counts["tasks_created"] += 1
            return task, fault

    def get(self, key: str, task_id: str) -> SimTask | None:
        """The task as it is now, or None when it does not exist for this key's account or has expired."""
        with self._session() as now:
            task = self._tasks.get(task_id)
            if task is None or task.account != self.config.account(key) or self._expired(task.submitted_at, now):
                return None
            return task

    def cancel(self, key: str, task_id: str) -> None:
        """Cancel a PENDING task; ApiError(400 UnsupportedOperation) for any other."""
        with self._session() as now:
            task = self.get(key, task_id)
            if task is None or task.status != "PENDING":
                raise ApiError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
            self._lanes[(task.account, task.family)].pending.remove(task)
            task.status = "CANCELED"
            task.ended_at = now
            self._changed.add(task.task_id)

    def list_tasks(self, key: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET /tasks/`` for ``key``'s account: filtered, newest first, paged; ApiError on bad parameters."""
        with self._session() as now:
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
        with self._session():
            task = self._tasks.get(task_id)
            return task if task is not None and task.status == "SUCCEEDED" else None

    def images(self, task: SimTask) -> dict[str, str]:
        """The image URLs the task was created with, by input field (also from another process's state)."""
        with self._lock:
            if task.request.images or self._file is None:
                return task.request.images
            with self._file.transaction():
                return self._file.images(task.task_id)

    def video_expires_at(self, task: SimTask) -> float:
        """The epoch instant after which the task's video URL answers 403."""
        ended = task.submitted_at if task.ended_at is None else task.ended_at
        return ended + self.config.real_seconds(self.config.expiry_seconds)

    def _advance(self, now: float) -> None:
        for lane in self._lanes.values():
            lane.advance(now, hold=self._hold, changed=self._changed)
        if self._file is None:
            self._changed.clear()  # nothing to save
            self._prune(now)

    def _expired(self, since: float, now: float) -> bool:
        return now > since + self.config.real_seconds(self.config.expiry_seconds)


def _fits(arrivals: deque[float], new: float, limit: int) -> bool:
    """Whether one more arrival at ``new`` keeps every ``RATE_WINDOW`` at most ``limit`` arrivals."""
    near = sorted([t for t in arrivals if abs(t - new) < RATE_WINDOW] + [new])
    return all(sum(1 for u in near if t <= u < t + RATE_WINDOW) <= limit for t in near if t <= new)
