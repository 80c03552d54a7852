"""The embedded task store: one SQLite file (WAL) shared by any number of processes on one machine.

Every call runs in a worker thread on the store's one connection (serialised by a capacity limiter of one), so
the event loop never waits for the disk or for another process's lock. Writes are short ``BEGIN IMMEDIATE``
transactions; a busy database is waited for (``busy_timeout``) in that thread. Waiters see other processes'
commits through ``PRAGMA data_version``, checked at most every ``POLL`` seconds however many wait.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ..tasks import Status, Task, iso, parse_iso, utcnow
from .base import (
    BUDGET_WINDOW,
    SUBMISSION_OUTCOMES,
    JournalError,
    Lease,
    Record,
    Submission,
    TaskStore,
    over_budget,
)

T = TypeVar("T")

#: Seconds between two checks for other processes' commits while someone waits for a change.
POLL = 0.1
#: Seconds a write waits for another process's transaction before failing.
BUSY_TIMEOUT = 10.0
#: SQLite's primary result codes of a file that is not a sound database: SQLITE_CORRUPT, SQLITE_NOTADB.
DAMAGED = (11, 26)
#: Slack when comparing times, so float rounding does not move a send out of its window.
EPSILON = 1e-6

#: Schema versions (``PRAGMA user_version``): each list of statements runs once, in one transaction.
#: Version 1 is the journal of wanx-mcp 0.1 (its tables may exist already with user_version 0).
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS tasks (
            task_id TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT NOT NULL, resolution TEXT,
            duration INTEGER, created_at TEXT NOT NULL, finished_at TEXT, video_path TEXT, generation_seconds REAL,
            download_attempts INTEGER NOT NULL DEFAULT 0, download_error TEXT, request TEXT NOT NULL,
            data TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at)",
        "CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status)",
        "CREATE TABLE IF NOT EXISTS events (task_id TEXT NOT NULL, at TEXT NOT NULL, status TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id)",
        """CREATE TABLE IF NOT EXISTS submissions (
            id INTEGER PRIMARY KEY AUTOINCREMENT, sent_at TEXT NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL,
            outcome TEXT NOT NULL DEFAULT 'sent', task_id TEXT, error TEXT)""",
    ],
    [
        "ALTER TABLE tasks ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE submissions ADD COLUMN owner TEXT",
        "ALTER TABLE submissions ADD COLUMN estimated_cost_cny REAL",
        "CREATE INDEX submissions_by_outcome ON submissions (outcome)",
        "CREATE INDEX submissions_by_sent ON submissions (sent_at)",
        "CREATE TABLE owners (owner TEXT PRIMARY KEY, expires REAL NOT NULL)",
        """CREATE TABLE leases (task_id TEXT PRIMARY KEY, owner TEXT NOT NULL, acquired REAL NOT NULL,
            expires REAL NOT NULL)""",
        "CREATE INDEX leases_by_owner ON leases (owner)",
        "CREATE TABLE tickets (id INTEGER PRIMARY KEY AUTOINCREMENT, family TEXT NOT NULL, owner TEXT NOT NULL)",
        """CREATE TABLE slots (id INTEGER PRIMARY KEY AUTOINCREMENT, family TEXT NOT NULL, owner TEXT NOT NULL,
            task_id TEXT UNIQUE, expires REAL)""",
        "CREATE TABLE sends (family TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX sends_by_family ON sends (family, at)",
        "CREATE TABLE limits (family TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    ],
]

#: The submissions sent from ``?`` on that count against the budget (not failed, their task not FAILED or CANCELED).
COUNTED_SPEND = (
    "FROM submissions s LEFT JOIN tasks t ON t.task_id = s.task_id WHERE s.sent_at >= ? AND s.outcome != 'failed'"
    " AND (t.status IS NULL OR t.status NOT IN ('FAILED', 'CANCELED'))"
)
LIVE_OWNERS = "SELECT owner FROM owners WHERE expires > :now"
#: A slot is in use unless its hold expired, or it is an in-flight create of an owner that lapsed.
SLOT_IN_USE = (
    f"(expires IS NULL OR expires > :now) AND (task_id IS NOT NULL OR expires IS NOT NULL OR owner IN ({LIVE_OWNERS}))"
)


class SQLiteStore(TaskStore):
    """The store in one SQLite file; ``busy_timeout``: seconds a write waits for other processes' locks."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._gate = anyio.CapacityLimiter(1)
        self._writes = 0  # commits of this instance (data_version only counts other connections')
        self._seen: tuple[int, int] = (0, 0)
        self._probed = -1.0
        self._probe_lock = anyio.Lock()
        self._local_change = anyio.Event()

    @property
    def location(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"

    # ---- plumbing ------------------------------------------------------------------------------------

    async def _run(self, call: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``call`` on the connection in a worker thread, in a ``BEGIN IMMEDIATE`` transaction if ``write``."""

        def work() -> T:
            db = self._connection()
            with self._errors("write" if write else "read"):
                if not write:
                    return call(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = call(db)
                except BaseException:
                    db.rollback()
                    raise
                db.commit()
                return result

        result = await anyio.to_thread.run_sync(work, limiter=self._gate)
        if write:
            self._writes += 1
            self._local_change.set()
            self._local_change = anyio.Event()
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"JournalError: the task journal at {self.location} is not open")
        return self._db

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in DAMAGED:
                raise JournalError(f"JournalError: cannot {doing} the task journal at {self.location}: {exc}") from exc
            raise self._damaged(str(exc)) from exc
        except ValueError as exc:  # a record that does not parse (JSON, or a Task it no longer is)
            raise self._damaged(f"a record does not parse: {str(exc).splitlines()[0]}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"JournalError: cannot {doing} the task journal at {self.location}: {exc}") from exc

    def _damaged(self, detail: str) -> JournalError:
        """The error of a journal that cannot be read as one: where it is, what is wrong, what to do (one line)."""
        return JournalError(
            f"JournalError: the task journal at {self.location} is damaged ({detail}). Run `wanx-mcp doctor "
            "--rebuild-journal`: it sets the file aside, starts a new journal and journals the account's tasks of the "
            "last 24 hours from DashScope's task list again (or move it aside yourself, with its -wal and -shm files)."
        )

    async def open(self) -> None:
        def connect() -> None:
            with self._errors("open"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=self._busy_timeout, check_same_thread=False
                )
                try:
                    db.row_factory = sqlite3.Row
                    db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    self._migrate(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db

        await anyio.to_thread.run_sync(connect, limiter=self._gate)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        for version, statements in enumerate(MIGRATIONS, start=1):
            if db.execute("PRAGMA user_version").fetchone()[0] >= version:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < version:  # another process may have won
                    for statement in statements:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={version}")
            except BaseException:
                db.rollback()
                raise
            db.commit()

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await anyio.to_thread.run_sync(close, limiter=self._gate)

    async def schema_version(self) -> int:
        return await self._run(lambda db: int(db.execute("PRAGMA user_version").fetchone()[0]))

    # ---- tasks ---------------------------------------------------------------------------------------

    async def insert_task(self, task: Task, request: dict[str, Any]) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            added = db.execute(
                "INSERT INTO tasks (task_id, status, model, resolution, duration, created_at, finished_at,"
                " video_path, request, data, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (task_id) DO NOTHING",
                (task.task_id, task.status, task.model, task.resolution, task.duration,
                 task.created_at or iso(utcnow()), task.finished_at, task.video_path, json.dumps(request),
                 task.model_dump_json()),
            ).rowcount  # fmt: skip
            if added:
                db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))
            return bool(added)

        return await self._run(insert, write=True)

    async def record(self, task_id: str) -> Record | None:
        def read(db: sqlite3.Connection) -> Record | None:
            row = db.execute(
                "SELECT data, version, download_attempts, download_error FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                return None
            return Record(Task.model_validate_json(row["data"]), row["version"], row["download_attempts"],
                          row["download_error"])  # fmt: skip

        return await self._run(read)

    async def update_task(
        self, task: Task, expected_version: int, *, generation_seconds: float | None = None
    ) -> int | None:
        def update(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT status, version FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
            if row is None or row["version"] != expected_version:
                return None
            db.execute(
                "UPDATE tasks SET status = ?, finished_at = ?, video_path = ?, data = ?, version = version + 1,"
                " generation_seconds = COALESCE(?, generation_seconds) WHERE task_id = ?",
                (task.status, task.finished_at, task.video_path, task.model_dump_json(), generation_seconds,
                 task.task_id),
            )  # fmt: skip
            if row["status"] != task.status:
                db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))
            return expected_version + 1

        return await self._run(update, write=True)

    async def request_of(self, task_id: str) -> dict[str, Any] | None:
        def read(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT request FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            return json.loads(row["request"]) if row else None

        return await self._run(read)

    async def list_tasks(self, status: Status | None = None, limit: int = 20) -> list[Task]:
        where, params = ("WHERE status = ?", (str(status),)) if status is not None else ("", ())
        return await self._tasks(f"SELECT data FROM tasks {where} ORDER BY created_at DESC LIMIT ?", (*params, limit))

    async def unfinished(self, *, unleased_at: float | None = None) -> list[Task]:
        query = (
            "SELECT data FROM tasks WHERE (status IN ('PENDING', 'RUNNING')"
            " OR (status = 'SUCCEEDED' AND video_path IS NULL))"
        )
        params: tuple[Any, ...] = ()
        if unleased_at is not None:
            query += " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.task_id = tasks.task_id AND l.expires > ?)"
            params = (unleased_at,)
        return await self._tasks(query + " ORDER BY created_at", params)

    async def _tasks(self, query: str, params: tuple[Any, ...]) -> list[Task]:
        return await self._run(
            lambda db: [Task.model_validate_json(row["data"]) for row in db.execute(query, params).fetchall()]
        )

    async def events(self, task_id: str) -> list[tuple[str, str]]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT at, status FROM events WHERE task_id = ? ORDER BY rowid", (task_id,)
            ).fetchall()
        )
        return [(row["at"], row["status"]) for row in rows]

    async def generation_seconds(self, model: str, resolution: str | None, duration: int | None,
                                 limit: int = 20) -> list[float]:  # fmt: skip
        rows = await self._run(
            lambda db: db.execute(
                "SELECT generation_seconds AS seconds FROM tasks WHERE status = 'SUCCEEDED' AND model = ?"
                " AND resolution IS ? AND duration IS ? AND generation_seconds IS NOT NULL"
                " ORDER BY finished_at DESC LIMIT ?",
                (model, resolution, duration, limit),
            ).fetchall()
        )
        return [float(row["seconds"]) for row in rows]

    async def note_download_failure(self, task_id: str, error: str) -> int:
        def note(db: sqlite3.Connection) -> int:
            row = db.execute(
                "UPDATE tasks SET download_attempts = download_attempts + 1, download_error = ? WHERE task_id = ?"
                " RETURNING download_attempts",
                (error, task_id),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._run(note, write=True)

    # ---- change checks -------------------------------------------------------------------------------

    async def _generation(self) -> tuple[int, int]:
        """(this instance's writes, other connections' commits): different as soon as anything changed; the
        database is asked at most every POLL seconds, shared by all waiters."""
        async with self._probe_lock:
            if anyio.current_time() - self._probed >= POLL:
                data_version = await self._run(lambda db: int(db.execute("PRAGMA data_version").fetchone()[0]))
                self._seen, self._probed = (self._writes, data_version), anyio.current_time()
            return self._writes, self._seen[1]

    async def _wait_for(self, read: Callable[[], Any], after_version: int, timeout: float) -> int:
        deadline = anyio.current_time() + max(timeout, 0.0)
        generation = await self._generation()
        version = int(await read())
        while version <= after_version:
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            with anyio.move_on_after(min(left, POLL)):
                await self._local_change.wait()
            now = await self._generation()
            if now != generation:
                generation, version = now, int(await read())
        return version

    async def wait_for_change(self, task_id: str, after_version: int, timeout: float) -> int:
        async def read() -> int:
            row = await self._run(
                lambda db: db.execute("SELECT version FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            )
            return int(row[0]) if row else 0

        return await self._wait_for(read, after_version, timeout)

    async def limits_version(self, family: str) -> int:
        row = await self._run(
            lambda db: db.execute("SELECT version FROM limits WHERE family = ?", (family,)).fetchone()
        )
        return int(row[0]) if row else 0

    async def wait_for_limits(self, family: str, after_version: int, timeout: float) -> int:
        return await self._wait_for(lambda: self.limits_version(family), after_version, timeout)

    # ---- submissions ---------------------------------------------------------------------------------

    async def record_submission(self, model: str, request: dict[str, Any], *, owner: str,
                                estimated_cost_cny: float | None = None) -> int:  # fmt: skip
        return await self._run(
            lambda db: _insert_submission(db, model, request, owner, estimated_cost_cny), write=True
        )

    async def reserve_submission(self, model: str, request: dict[str, Any], *, owner: str, estimated_cost_cny: float,
                                 budget: float, window: timedelta = BUDGET_WINDOW) -> int:  # fmt: skip
        def reserve(db: sqlite3.Connection) -> int:  # BEGIN IMMEDIATE: no other process writes meanwhile
            rows = db.execute(
                f"SELECT s.sent_at, s.estimated_cost_cny {COUNTED_SPEND} AND s.estimated_cost_cny IS NOT NULL"
                " ORDER BY s.sent_at",
                (iso(utcnow() - window),),
            ).fetchall()
            counted = [(parse_iso(row[0]) or utcnow(), float(row[1])) for row in rows]
            refusal = over_budget(counted, estimated_cost_cny, budget, window)
            if refusal is not None:
                raise refusal
            return _insert_submission(db, model, request, owner, estimated_cost_cny)

        return await self._run(reserve, write=True)

    async def finish_submission(self, submission_id: int, outcome: str, *, task_id: str | None = None,
                                error: str | None = None) -> None:  # fmt: skip
        if outcome not in SUBMISSION_OUTCOMES:
            raise ValueError(f"unknown submission outcome {outcome!r}; known: {SUBMISSION_OUTCOMES}")
        await self._run(
            lambda db: db.execute(
                "UPDATE submissions SET outcome = ?, task_id = ?, error = ? WHERE id = ?",
                (outcome, task_id, error, submission_id),
            ),
            write=True,
        )

    async def _submissions(self, where: str, params: dict[str, Any], order: str, limit: int = -1) -> list[Submission]:
        def read(db: sqlite3.Connection) -> list[Submission]:
            rows = db.execute(
                "SELECT id, sent_at, model, request, outcome, owner, task_id, error, estimated_cost_cny"
                f" FROM submissions WHERE {where} ORDER BY id {order} LIMIT :limit",
                params | {"limit": limit},
            ).fetchall()
            return [Submission(**(dict(row) | {"request": json.loads(row["request"])})) for row in rows]

        return await self._run(read)

    async def submissions(self, outcome: str | None = None, limit: int = 50) -> list[Submission]:
        where = "outcome = :outcome" if outcome else "1"
        return await self._submissions(where, {"outcome": outcome}, "DESC", limit)

    async def unresolved_submissions(self, now: float) -> list[Submission]:
        where = f"outcome = 'ambiguous' OR (outcome = 'sent' AND (owner IS NULL OR owner NOT IN ({LIVE_OWNERS})))"
        return await self._submissions(where, {"now": now}, "ASC")

    async def adopt(self, submission_id: int, task: Task, request: dict[str, Any]) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            claimed = db.execute(
                "UPDATE submissions SET outcome = 'recovered', task_id = ?"
                " WHERE id = ? AND outcome IN ('ambiguous', 'sent')",
                (task.task_id, submission_id),
            ).rowcount
            if claimed and db.execute(
                "INSERT INTO tasks (task_id, status, model, resolution, duration, created_at, finished_at,"
                " video_path, request, data, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (task_id) DO NOTHING",
                (task.task_id, task.status, task.model, task.resolution, task.duration,
                 task.created_at or iso(utcnow()), task.finished_at, task.video_path, json.dumps(request),
                 task.model_dump_json()),
            ).rowcount:  # fmt: skip
                db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))
            return bool(claimed)

        return await self._run(claim, write=True)

    async def spend_since(self, moment: datetime) -> float:
        query = f"SELECT COALESCE(SUM(s.estimated_cost_cny), 0) {COUNTED_SPEND}"
        row = await self._run(lambda db: db.execute(query, (iso(moment),)).fetchone())
        return float(row[0])

    # ---- owners and leases ---------------------------------------------------------------------------

    async def heartbeat(self, owner: str, ttl: float, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO owners VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET expires = excluded.expires",
                (owner, now + ttl),
            ),
            write=True,
        )

    async def live_owners(self, now: float) -> list[str]:
        rows = await self._run(lambda db: db.execute(LIVE_OWNERS + " ORDER BY owner", {"now": now}).fetchall())
        return [row[0] for row in rows]

    async def retire(self, owner: str) -> None:
        def retire(db: sqlite3.Connection) -> None:
            families = {row[0] for row in db.execute("SELECT family FROM tickets WHERE owner = ?", (owner,))}
            families |= {
                row[0] for row in db.execute(
                    "SELECT family FROM slots WHERE owner = ? AND task_id IS NULL AND expires IS NULL", (owner,)
                )
            }  # fmt: skip
            db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            db.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            db.execute("DELETE FROM tickets WHERE owner = ?", (owner,))
            db.execute("DELETE FROM slots WHERE owner = ? AND task_id IS NULL AND expires IS NULL", (owner,))
            for family in families:
                _bump(db, family)

        await self._run(retire, write=True)

    async def acquire_lease(self, task_id: str, owner: str, ttl: float, now: float) -> bool:
        def acquire(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT owner, expires FROM leases WHERE task_id = ?", (task_id,)).fetchone()
            if row is not None and row["owner"] != owner and row["expires"] > now:
                return False
            keep = row is not None and row["owner"] == owner and row["expires"] > now
            db.execute(
                "INSERT INTO leases VALUES (:task, :owner, :now, :expires) ON CONFLICT (task_id) DO UPDATE SET"
                " owner = :owner, expires = :expires, acquired = CASE WHEN :keep THEN acquired ELSE :now END",
                {"task": task_id, "owner": owner, "now": now, "expires": now + ttl, "keep": keep},
            )
            return True

        return await self._run(acquire, write=True)

    async def renew_leases(self, owner: str, ttl: float, now: float) -> list[str]:
        rows = await self._run(
            lambda db: db.execute(
                "UPDATE leases SET expires = ? WHERE owner = ? AND expires > ? RETURNING task_id",
                (now + ttl, owner, now),
            ).fetchall(),
            write=True,
        )
        return [row[0] for row in rows]

    async def release_lease(self, task_id: str, owner: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM leases WHERE task_id = ? AND owner = ?", (task_id, owner)), write=True
        )

    async def leases(self, now: float) -> list[Lease]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT task_id, owner, acquired, expires FROM leases WHERE expires > ? ORDER BY acquired", (now,)
            ).fetchall()
        )
        return [Lease(row["task_id"], row["owner"], row["acquired"], row["expires"]) for row in rows]

    # ---- account-wide rate limits --------------------------------------------------------------------

    async def enqueue(self, family: str, owner: str, now: float) -> int:
        def enqueue(db: sqlite3.Connection) -> int:
            cursor = db.execute("INSERT INTO tickets (family, owner) VALUES (?, ?)", (family, owner))
            _bump(db, family)
            return int(cursor.lastrowid or 0)

        return await self._run(enqueue, write=True)

    async def take_slot(self, family: str, ticket: int, limit: int, now: float) -> int | None:
        def take(db: sqlite3.Connection) -> int | None:
            params = {"family": family, "now": now}
            changed = db.execute(
                f"DELETE FROM tickets WHERE family = :family AND owner NOT IN ({LIVE_OWNERS})", params
            ).rowcount
            changed += db.execute(f"DELETE FROM slots WHERE family = :family AND NOT ({SLOT_IN_USE})", params).rowcount
            try:
                first = db.execute(
                    "SELECT id, owner FROM tickets WHERE family = :family ORDER BY id LIMIT 1", params
                ).fetchone()
                if first is None or first["id"] != ticket:
                    if not db.execute("SELECT 1 FROM tickets WHERE id = ?", (ticket,)).fetchone():
                        raise LookupError(f"ticket {ticket} of {family} is gone: its owner's heartbeat lapsed")
                    return None
                in_use = db.execute("SELECT COUNT(*) FROM slots WHERE family = :family", params).fetchone()[0]
                if in_use >= limit:
                    return None
                db.execute("DELETE FROM tickets WHERE id = ?", (ticket,))
                changed += 1
                cursor = db.execute("INSERT INTO slots (family, owner) VALUES (?, ?)", (family, first["owner"]))
                return int(cursor.lastrowid or 0)
            finally:
                if changed:
                    _bump(db, family)

        return await self._run(take, write=True)

    async def leave_queue(self, ticket: int) -> None:
        await self._change_slots("DELETE FROM tickets WHERE id = ? RETURNING family", (ticket,))

    async def queued(self, family: str, now: float) -> int:
        row = await self._run(
            lambda db: db.execute(
                f"SELECT COUNT(*) FROM tickets WHERE family = :family AND owner IN ({LIVE_OWNERS})",
                {"family": family, "now": now},
            ).fetchone()
        )
        return int(row[0])

    async def _change_slots(self, statement: str, params: tuple[Any, ...]) -> bool:
        """Run one statement ``... RETURNING family`` and bump the families it touched; True if it touched any."""

        def change(db: sqlite3.Connection) -> bool:
            families = {row[0] for row in db.execute(statement, params).fetchall()}
            for family in families:
                _bump(db, family)
            return bool(families)

        return await self._run(change, write=True)

    async def assign_slot(self, slot_id: int, task_id: str) -> None:
        def assign(db: sqlite3.Connection) -> None:
            family = db.execute("SELECT family FROM slots WHERE id = ?", (slot_id,)).fetchone()
            if family is None:
                return
            if db.execute("SELECT 1 FROM slots WHERE task_id = ?", (task_id,)).fetchone():
                db.execute("DELETE FROM slots WHERE id = ?", (slot_id,))
            else:
                db.execute("UPDATE slots SET task_id = ?, expires = NULL WHERE id = ?", (task_id, slot_id))
            _bump(db, family[0])

        await self._run(assign, write=True)

    async def hold_slot(self, slot_id: int, until: float) -> None:
        await self._change_slots("UPDATE slots SET expires = ? WHERE id = ? RETURNING family", (until, slot_id))

    async def free_slot(self, slot_id: int) -> None:
        await self._change_slots("DELETE FROM slots WHERE id = ? RETURNING family", (slot_id,))

    async def track_task(self, family: str, task_id: str, owner: str) -> None:
        await self._change_slots(
            "INSERT INTO slots (family, owner, task_id) VALUES (?, ?, ?) ON CONFLICT (task_id) DO NOTHING"
            " RETURNING family",
            (family, owner, task_id),
        )

    async def release_task(self, task_id: str) -> bool:
        return await self._change_slots("DELETE FROM slots WHERE task_id = ? RETURNING family", (task_id,))

    async def running(self, family: str, now: float) -> int:
        row = await self._run(
            lambda db: db.execute(
                f"SELECT COUNT(*) FROM slots WHERE family = :family AND {SLOT_IN_USE}", {"family": family, "now": now}
            ).fetchone()
        )
        return int(row[0])

    async def slot_holders(self, family: str, now: float) -> list[str]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT task_id FROM slots WHERE family = ? AND task_id IS NOT NULL ORDER BY id", (family,)
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def reserve_send(self, family: str, per_window: int, window: float, now: float) -> float:
        def reserve(db: sqlite3.Connection) -> float:
            db.execute("DELETE FROM sends WHERE family = ? AND at <= ?", (family, now - window + EPSILON))
            sent = db.execute("SELECT COUNT(*), MIN(at) FROM sends WHERE family = ?", (family,)).fetchone()
            if sent[0] < per_window:
                db.execute("INSERT INTO sends VALUES (?, ?)", (family, now))
                return 0.0
            return max(sent[1] + window - now, EPSILON)

        return await self._run(reserve, write=True)


def set_aside(path: Path) -> Path | None:
    """Rename a (damaged) journal and its ``-wal`` and ``-shm`` files to ``<name>.broken-<UTC time>``, so that the
    next open makes a new empty one; returns the new name of the journal (None if there was none)."""
    if not path.exists():
        return None
    suffix = ".broken-" + utcnow().strftime("%Y%m%dT%H%M%SZ")
    for companion in ("-wal", "-shm"):
        extra = path.with_name(path.name + companion)
        if extra.exists():
            extra.rename(path.with_name(path.name + suffix + companion))
    moved = path.with_name(path.name + suffix)
    path.rename(moved)
    return moved


def _insert_submission(db: sqlite3.Connection, model: str, request: dict[str, Any], owner: str,
                       estimated_cost_cny: float | None) -> int:  # fmt: skip
    cursor = db.execute(
        "INSERT INTO submissions (sent_at, model, request, owner, estimated_cost_cny) VALUES (?, ?, ?, ?, ?)",
        (iso(utcnow()), model, json.dumps(request), owner, estimated_cost_cny),
    )
    return int(cursor.lastrowid or 0)


def _bump(db: sqlite3.Connection, family: str) -> None:
    """Note a change of the family's limits state (for :meth:`SQLiteStore.wait_for_limits`)."""
    db.execute("INSERT INTO limits VALUES (?, 1) ON CONFLICT (family) DO UPDATE SET version = version + 1", (family,))
