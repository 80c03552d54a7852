"""The task store: every piece of state that processes sharing one DashScope account must agree on.

The watcher, the service and the rate limiter reach shared state only through :class:`TaskStore`, which has
two backends: SQLite (``store.sqlite.SQLiteStore``, the embedded default, any number of processes on one
machine) and PostgreSQL (``store.postgres.PostgresStore``, replicas on several machines). Both pass the
contract suite in ``tests/test_store.py``.

What is stored:

- **tasks**: one record per task id with a *version* that grows by one on every write. Writes are
  compare-and-set (:meth:`TaskStore.update_task` names the version it read), so a process working from a
  stale read never overwrites a newer state; :meth:`TaskStore.modify` is the read-change-write loop.
- **events**: a task's status history, appended in the same transaction as the status change.
- **submissions**: written before a create is sent (outcome ``sent``), then ``created``, ``failed``,
  ``ambiguous`` (sent, answer lost) or ``recovered`` (its task was found and adopted later); with the
  owner that sent it and its estimated cost.
- **owners**: the processes using the store, each alive while it renews its heartbeat. Anything an owner
  holds without a task (an in-flight create's slot, a place in a queue, a ``sent`` submission) is given up
  when its heartbeat lapses, so a ``kill -9`` never blocks the others for longer than the heartbeat TTL.
- **watch leases**: at most one live owner follows (polls and downloads) a task; leases expire unless
  renewed.
- **rate-limit state** per family (shared by every process on the store): running-task slots taken in FIFO
  order of tickets, ambiguous holds with an expiry, and the send times of recent submissions for pacing.

Times: rate-limit, lease and heartbeat methods take ``now``, the caller's clock in epoch seconds
(``time.time()`` in production; tests pass a fake clock). Record times (``sent_at``, events) are the
backend's UTC wall clock, in the ISO 8601 form of :func:`wanx_mcp.tasks.iso`.

Errors: a backend raises :class:`JournalError` (the agent-visible code) when it cannot be opened or
written; its message names :attr:`TaskStore.location`, never a password.
"""

from __future__ import annotations

import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..errors import BudgetExceeded, WanxError
from ..tasks import Status, Task, iso

#: Outcomes of a submission (see the module docstring).
SUBMISSION_OUTCOMES = ("sent", "created", "failed", "ambiguous", "recovered")
#: The rolling window of ``WANX_BUDGET_CNY``.
BUDGET_WINDOW = timedelta(hours=24)
#: Slack when comparing amounts of CNY, so float rounding does not refuse a submission that fits exactly.
CNY_EPSILON = 1e-9


class JournalError(WanxError):
    """The task store cannot be opened or written."""

    code = "JournalError"


def over_budget(counted: list[tuple[datetime, float]], cost: float, budget: float,
                window: timedelta = BUDGET_WINDOW) -> BudgetExceeded | None:  # fmt: skip
    """The refusal of a submission costing ``cost`` when ``counted`` (send time and estimate of the submissions in
    the window, oldest first) are spent already, or None if it fits within ``budget``. Its ``frees_at`` is when
    enough of them leave the window for it to fit."""
    spent = sum(amount for _, amount in counted)
    if spent + cost <= budget + CNY_EPSILON:
        return None
    frees_at, left = None, spent
    if cost <= budget + CNY_EPSILON:
        for sent_at, amount in counted:
            left -= amount
            if left + cost <= budget + CNY_EPSILON:
                frees_at = iso(sent_at + window)
                break
    return BudgetExceeded(cost, round(spent, 4), budget, frees_at)


def new_owner_id() -> str:
    """A fresh id for this process's use of a store: host, pid and a random tag (unique across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Record:
    """A stored task with its version (for compare-and-set) and download bookkeeping."""

    task: Task
    version: int
    download_attempts: int = 0
    download_error: str | None = None


@dataclass(frozen=True)
class Submission:
    """One create as sent (or about to be sent) upstream."""

    id: int
    sent_at: str
    model: str
    request: dict[str, Any]
    outcome: str
    owner: str | None = None
    task_id: str | None = None
    error: str | None = None
    estimated_cost_cny: float | None = None


@dataclass(frozen=True)
class Lease:
    """A live watch lease: ``owner`` follows ``task_id`` until ``expires_at`` (epoch seconds) unless renewed."""

    task_id: str
    owner: str
    acquired_at: float
    expires_at: float


class TaskStore(ABC):
    """Async access to the shared state; one instance per process, safe to use from many tasks at once.

    Use ``await store.open()`` once before anything else (it connects and applies migrations) and
    ``await store.close()`` at the end. Every method is a short transaction of its own unless said otherwise.
    """

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, for messages: a file path or a URL without its password."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to the newest version (versioned migrations, each applied once and
        atomically; a journal made by an older wanx-mcp is upgraded in place). Raises ``JournalError``."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Leases and slots are not given up here (see :meth:`retire`)."""

    @abstractmethod
    async def schema_version(self) -> int:
        """The applied schema version."""

    # ---- tasks -----------------------------------------------------------------------------------------

    @abstractmethod
    async def insert_task(self, task: Task, request: dict[str, Any]) -> bool:
        """Store a new task at version 1 with its journaled ``request`` and a first event; False (and nothing
        written) if the task id is stored already."""

    @abstractmethod
    async def record(self, task_id: str) -> Record | None:
        """The task's current record, or None."""

    @abstractmethod
    async def update_task(
        self, task: Task, expected_version: int, *, generation_seconds: float | None = None
    ) -> int | None:
        """Compare-and-set: store ``task`` if its stored version is still ``expected_version``; returns the new
        version (``expected_version + 1``), or None if the record changed meanwhile (or is missing).

        A status change appends an event in the same transaction. ``generation_seconds`` (DashScope's own
        submit-to-end time, for poll scheduling) is kept when None. The download bookkeeping
        (:meth:`note_download_failure`) is left as it is: the last error stays on record after a success.
        """

    @abstractmethod
    async def request_of(self, task_id: str) -> dict[str, Any] | None:
        """The journaled request a task was created with."""

    @abstractmethod
    async def list_tasks(self, status: Status | None = None, limit: int = 20) -> list[Task]:
        """Tasks newest first (by ``created_at``), optionally of one status."""

    @abstractmethod
    async def unfinished(self, *, unleased_at: float | None = None) -> list[Task]:
        """Tasks still owed something, oldest first: PENDING or RUNNING, or SUCCEEDED without a ``video_path``.

        With ``unleased_at`` (epoch seconds), only those without a lease live at that moment.
        """

    @abstractmethod
    async def events(self, task_id: str) -> list[tuple[str, str]]:
        """The task's status history: (ISO time, status) in the order recorded."""

    @abstractmethod
    async def generation_seconds(self, model: str, resolution: str | None, duration: int | None,
                                 limit: int = 20) -> list[float]:  # fmt: skip
        """DashScope's generation times of the newest SUCCEEDED tasks of this model, resolution and duration."""

    @abstractmethod
    async def note_download_failure(self, task_id: str, error: str) -> int:
        """Count a failed download attempt and keep ``error``; returns the attempts so far. Does not change
        the task's version (no caller is woken for it)."""

    # ---- change checks ---------------------------------------------------------------------------------

    @abstractmethod
    async def wait_for_change(self, task_id: str, after_version: int, timeout: float) -> int:
        """Wait at most ``timeout`` seconds for the task's version to exceed ``after_version``, whichever
        process writes it; returns the version then (0 if the task is not stored). Returns at once if it is
        newer already. SQLite checks sub-second (``PRAGMA data_version`` then the row); PostgreSQL listens.
        """

    @abstractmethod
    async def limits_version(self, family: str) -> int:
        """A number that grows whenever the family's slots, queue or holds change (0 before any)."""

    @abstractmethod
    async def wait_for_limits(self, family: str, after_version: int, timeout: float) -> int:
        """Like :meth:`wait_for_change` for :meth:`limits_version`; may return early without a change."""

    # ---- submissions -----------------------------------------------------------------------------------

    @abstractmethod
    async def record_submission(self, model: str, request: dict[str, Any], *, owner: str,
                                estimated_cost_cny: float | None = None) -> int:  # fmt: skip
        """Journal a create about to be sent (outcome ``sent``, ``sent_at`` now); returns its id."""

    @abstractmethod
    async def reserve_submission(self, model: str, request: dict[str, Any], *, owner: str, estimated_cost_cny: float,
                                 budget: float, window: timedelta = BUDGET_WINDOW) -> int:  # fmt: skip
        """Like :meth:`record_submission`, in one transaction with the budget check that makes it atomic across
        processes: if the spend :meth:`spend_since` counts over the last ``window`` plus ``estimated_cost_cny``
        exceeds ``budget``, raise :class:`BudgetExceeded` (from :func:`over_budget`) and write nothing."""

    @abstractmethod
    async def finish_submission(self, submission_id: int, outcome: str, *, task_id: str | None = None,
                                error: str | None = None) -> None:  # fmt: skip
        """Set the outcome of a submission; ``ValueError`` (nothing written) unless one of ``SUBMISSION_OUTCOMES``."""

    @abstractmethod
    async def submissions(self, outcome: str | None = None, limit: int = 50) -> list[Submission]:
        """Submissions newest first, optionally of one outcome."""

    @abstractmethod
    async def unresolved_submissions(self, now: float) -> list[Submission]:
        """Submissions whose task may exist upstream without being stored, oldest first: ``ambiguous`` ones,
        and ``sent`` ones whose owner's heartbeat has lapsed at ``now`` (the process died mid-create)."""

    @abstractmethod
    async def adopt(self, submission_id: int, task: Task, request: dict[str, Any]) -> bool:
        """Atomically mark an unresolved submission ``recovered`` with ``task``'s id and store ``task`` (if it
        is not stored already); False, with nothing written, if the submission is resolved already."""

    @abstractmethod
    async def spend_since(self, moment: datetime) -> float:
        """Estimated CNY of the submissions sent from ``moment`` on, except those that failed and those whose
        task FAILED or was CANCELED (the budget guard's rolling 24 h)."""

    # ---- owners and watch leases -----------------------------------------------------------------------

    @abstractmethod
    async def heartbeat(self, owner: str, ttl: float, now: float) -> None:
        """Mark ``owner`` alive until ``now + ttl``."""

    @abstractmethod
    async def live_owners(self, now: float) -> list[str]:
        """Owners whose heartbeat has not lapsed at ``now``."""

    @abstractmethod
    async def retire(self, owner: str) -> None:
        """``owner`` stops cleanly: drop its heartbeat, leases, queue tickets and unassigned slots (slots of
        its tasks stay: those tasks still run upstream)."""

    @abstractmethod
    async def acquire_lease(self, task_id: str, owner: str, ttl: float, now: float) -> bool:
        """Take the watch lease of ``task_id`` for ``ttl`` seconds if nobody else holds a live one (renewing it
        if ``owner`` holds it); True if ``owner`` holds it now."""

    @abstractmethod
    async def renew_leases(self, owner: str, ttl: float, now: float) -> list[str]:
        """Extend every live lease of ``owner`` to ``now + ttl``; returns their task ids (a lease that lapsed
        meanwhile, perhaps taken by another owner, is not among them)."""

    @abstractmethod
    async def release_lease(self, task_id: str, owner: str) -> None:
        """Give up ``owner``'s lease of ``task_id`` (no-op if it holds none)."""

    @abstractmethod
    async def leases(self, now: float) -> list[Lease]:
        """Every lease live at ``now``."""

    # ---- account-wide rate limits ----------------------------------------------------------------------

    @abstractmethod
    async def enqueue(self, family: str, owner: str, now: float) -> int:
        """Take a FIFO ticket for a running-task slot of ``family``; returns the ticket id (ids increase).

        The ticket lives while ``owner``'s heartbeat does: call :meth:`heartbeat` first and keep renewing it."""

    @abstractmethod
    async def take_slot(self, family: str, ticket: int, limit: int, now: float) -> int | None:
        """Atomically: if ``ticket`` is the oldest live ticket of ``family`` (tickets of lapsed owners are
        dropped) and fewer than ``limit`` slots are in use at ``now`` (expired holds and unassigned slots of
        lapsed owners are freed first), remove the ticket and take a slot for its owner; returns the slot id,
        else None (keeping the ticket). Raises ``LookupError`` if the ticket is gone (its owner lapsed)."""

    @abstractmethod
    async def leave_queue(self, ticket: int) -> None:
        """Drop a ticket (the waiter got its slot or gave up)."""

    @abstractmethod
    async def queued(self, family: str, now: float) -> int:
        """Live tickets of ``family``."""

    @abstractmethod
    async def assign_slot(self, slot_id: int, task_id: str) -> None:
        """The create succeeded: the slot belongs to ``task_id`` (no expiry) until released. If the task holds a
        slot already (tracked by another process), this one is freed instead, keeping one slot per task."""

    @abstractmethod
    async def hold_slot(self, slot_id: int, until: float) -> None:
        """Keep the slot until ``until`` (epoch seconds), then it frees itself (an ambiguous create)."""

    @abstractmethod
    async def free_slot(self, slot_id: int) -> None:
        """Free the slot now (the create failed without creating a task)."""

    @abstractmethod
    async def track_task(self, family: str, task_id: str, owner: str) -> None:
        """Count an unfinished task against ``family`` unless it holds a slot already."""

    @abstractmethod
    async def release_task(self, task_id: str) -> bool:
        """``task_id`` reached a final status: free its slot; False if it held none."""

    @abstractmethod
    async def running(self, family: str, now: float) -> int:
        """Slots of ``family`` in use at ``now``: tasks, in-flight creates of live owners, unexpired holds."""

    @abstractmethod
    async def slot_holders(self, family: str, now: float) -> list[str]:
        """Task ids holding slots of ``family``."""

    @abstractmethod
    async def reserve_send(self, family: str, per_window: int, window: float, now: float) -> float:
        """Pacing: if fewer than ``per_window`` submissions of ``family`` were counted in ``(now - window,
        now]``, count one at ``now`` and return 0; else count nothing and return the seconds until one fits."""

    # ---- conveniences built on the methods above ------------------------------------------------------

    async def get(self, task_id: str) -> Task | None:
        """The stored task, or None."""
        record = await self.record(task_id)
        return None if record is None else record.task

    async def modify(self, task_id: str, change: Callable[[Task], Task | None], *,
                     generation_seconds: float | None = None, attempts: int = 8) -> Task | None:  # fmt: skip
        """Apply ``change`` to the freshest stored task and write it by compare-and-set, re-reading and
        re-applying on a conflict; ``change`` returning None (or the task unchanged) writes nothing.
        Returns the stored task afterwards (None if the task is not stored)."""
        for _ in range(attempts):
            record = await self.record(task_id)
            if record is None:
                return None
            updated = change(record.task)
            if updated is None or updated == record.task:
                return record.task
            if await self.update_task(updated, record.version, generation_seconds=generation_seconds) is not None:
                return updated
        raise JournalError(f"JournalError: task {task_id} kept changing in {self.location}; gave up updating it")
