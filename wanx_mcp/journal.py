"""The task journal: every task and submission in SQLite (WAL), so nothing paid for is lost on a restart."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import WanxError
from .tasks import Status, Task, iso, utcnow

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    resolution TEXT,
    duration INTEGER,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    video_path TEXT,
    generation_seconds REAL,
    download_attempts INTEGER NOT NULL DEFAULT 0,
    download_error TEXT,
    request TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    at TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sent_at TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'sent',
    task_id TEXT,
    error TEXT
);
"""


class JournalError(WanxError):
    """The journal database cannot be opened or written."""

    code = "JournalError"


class Journal:
    """SQLite-backed task records; use from one thread (the event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"JournalError: cannot open the task journal at {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:
                yield self._db
        except sqlite3.Error as exc:
            raise JournalError(f"JournalError: cannot write the task journal at {self.path}: {exc}") from exc

    # submissions: written before a create is sent, so an ambiguous one can be found later
    def record_submission(self, model: str, request: dict[str, Any]) -> int:
        with self._writing() as db:
            cursor = db.execute(
                "INSERT INTO submissions (sent_at, model, request) VALUES (?, ?, ?)",
                (iso(utcnow()), model, json.dumps(request)),
            )
        return int(cursor.lastrowid or 0)

    def finish_submission(self, submission_id: int, outcome: str, *, task_id: str | None = None,
                          error: str | None = None) -> None:  # fmt: skip
        with self._writing() as db:
            db.execute(
                "UPDATE submissions SET outcome = ?, task_id = ?, error = ? WHERE id = ?",
                (outcome, task_id, error, submission_id),
            )

    def submissions(self, outcome: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = "SELECT id, sent_at, model, outcome, task_id, error FROM submissions"
        params: tuple[Any, ...] = ()
        if outcome:
            query, params = query + " WHERE outcome = ?", (outcome,)
        rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [dict(row) for row in rows]

    def ambiguous_submissions(self) -> list[dict[str, Any]]:
        """Submissions whose create may have made a task that no journaled task is known to be, with requests."""
        rows = self._db.execute(
            "SELECT id, sent_at, model, request FROM submissions WHERE outcome = 'ambiguous' ORDER BY id"
        ).fetchall()
        return [dict(row) | {"request": json.loads(row["request"])} for row in rows]

    def adopt(self, submission_id: int, task: Task, request: dict[str, Any]) -> bool:
        """Journal ``task`` as the one an ambiguous submission created (outcome 'recovered'); False if that
        submission has a task already."""
        with self._writing() as db:
            claimed = db.execute(
                "UPDATE submissions SET outcome = 'recovered', task_id = ? WHERE id = ? AND outcome = 'ambiguous'",
                (task.task_id, submission_id),
            ).rowcount
        if claimed:
            self.insert(task, request)
        return bool(claimed)

    # tasks
    def insert(self, task: Task, request: dict[str, Any]) -> None:
        with self._writing() as db:
            db.execute(
                "INSERT INTO tasks (task_id, status, model, resolution, duration, created_at, request, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task.task_id, task.status, task.model, task.resolution, task.duration,
                 task.created_at or iso(utcnow()), json.dumps(request), task.model_dump_json()),
            )  # fmt: skip
            db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))

    def update(self, task: Task, generation_seconds: float | None = None) -> None:
        """Store ``task``; a status change is also appended to its event history.

        ``generation_seconds`` is DashScope's own submit-to-end time, learned for poll scheduling.
        """
        with self._writing() as db:
            row = db.execute("SELECT status FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
            if row is None:
                raise JournalError(f"JournalError: task {task.task_id} is not in the journal")
            db.execute(
                "UPDATE tasks SET status = ?, finished_at = ?, video_path = ?, data = ?,"
                " generation_seconds = COALESCE(?, generation_seconds) WHERE task_id = ?",
                (task.status, task.finished_at, task.video_path, task.model_dump_json(), generation_seconds,
                 task.task_id),
            )
            if row["status"] != task.status:
                db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))

    def note_download_failure(self, task_id: str, error: str) -> int:
        """Count a failed download attempt; returns the number of attempts so far."""
        with self._writing() as db:
            db.execute(
                "UPDATE tasks SET download_attempts = download_attempts + 1, download_error = ? WHERE task_id = ?",
                (error, task_id),
            )
        row = self._db.execute("SELECT download_attempts FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return int(row[0]) if row else 0

    def get(self, task_id: str) -> Task | None:
        row = self._db.execute("SELECT data FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return Task.model_validate_json(row["data"]) if row else None

    def request_of(self, task_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT request FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row["request"]) if row else None

    def list(self, status: Status | None = None, limit: int = 20) -> list[Task]:
        query, params = "SELECT data FROM tasks", ()
        if status is not None:
            query, params = query + " WHERE status = ?", (str(status),)
        rows = self._db.execute(query + " ORDER BY created_at DESC LIMIT ?", (*params, limit)).fetchall()
        return [Task.model_validate_json(row["data"]) for row in rows]

    def unfinished(self) -> list[Task]:
        """Tasks the watcher still owes something: a final status, or a video on disk."""
        rows = self._db.execute(
            "SELECT data FROM tasks WHERE status IN ('PENDING', 'RUNNING')"
            " OR (status = 'SUCCEEDED' AND video_path IS NULL) ORDER BY created_at"
        ).fetchall()
        return [Task.model_validate_json(row["data"]) for row in rows]

    def events(self, task_id: str) -> list[tuple[str, str]]:
        rows = self._db.execute("SELECT at, status FROM events WHERE task_id = ? ORDER BY rowid", (task_id,))
        return [(row["at"], row["status"]) for row in rows]

    def generation_seconds(self, model: str, resolution: str | None, duration: int | None,
                           limit: int = 20) -> list[float]:  # fmt: skip
        """How long recent SUCCEEDED tasks like this one took upstream, from submission to the end."""
        rows = self._db.execute(
            "SELECT generation_seconds AS seconds FROM tasks"
            " WHERE status = 'SUCCEEDED' AND model = ? AND resolution IS ? AND duration IS ?"
            " AND generation_seconds IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (model, resolution, duration, limit),
        ).fetchall()
        return [float(row["seconds"]) for row in rows if row["seconds"] is not None]
