"""The embedded task store: one SQLite file (WAL) shared by any number of processes on one machine.

Calls run on the event loop, never waiting there for a lock or the disk. Reads use a connection of their own:
under WAL a reader never waits for a writer, and a read of this small file takes about a tenth of a millisecond.
Writes are short ``BEGIN IMMEDIATE`` transactions on a second connection, one at a time; commits do not sync
(``synchronous=NORMAL``), and the log is checkpointed (which syncs) in a worker thread every ``CHECKPOINT_EVERY``
writes. A write that finds another process holding the write lock is retried in a worker thread, which waits for
it (``busy_timeout``). Hops to a worker thread for every call, queued behind each other and behind the event
loop for the interpreter lock, made a status check's answer reach its waiter tens of milliseconds late.

A write wakes the waiters of the task it wrote, not every waiter; other processes' commits are seen through
``PRAGMA data_version``, checked at most every ``POLL`` seconds however many wait, and the tasks they changed
through the feed column ``changed``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

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
#: Seconds between two checks for changes while the feed of changed tasks is followed (SQLiteStore.changes).
FEED_POLL = 0.25
#: Seconds a write waits for another process's transaction before failing.
BUSY_TIMEOUT = 10.0
#: Seconds a read (on the event loop) waits for the rare lock a WAL reader can meet (another process recovering
#: the log after a crash) before failing.
READ_BUSY_TIMEOUT = 1.0
#: SQLite's primary result codes of a file that is not a sound database: SQLITE_CORRUPT, SQLITE_NOTADB.
DAMAGED = (11, 26)
#: SQLite's primary result code of a lock held by another connection.
SQLITE_BUSY = 5
#: Writes between two checkpoints of the write-ahead log into the database file.
CHECKPOINT_EVERY = 500
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
    [  # the feed of changes: every write of a task stamps it with the next number (writes are serialised)
        "ALTER TABLE tasks ADD COLUMN changed INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX tasks_by_changed ON tasks (changed)",
    ],
]

#: The feed number of the next write of a task.
NEXT_CHANGE = "(SELECT COALESCE(MAX(changed), 0) + 1 FROM tasks)"

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
        self._in_memory = str(path) == ":memory:"
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._gate = anyio.CapacityLimiter(1)
        self._writes = 0  # commits of this instance (each CHECKPOINT_EVERY-th checkpoints the log)
        self._data_version = 0  # the reading connection's PRAGMA data_version when last probed
        self._cursor = 0  # the feed number up to which other connections' task changes were woken for
        self._probed = -1.0
        self._local_change = anyio.Event()
        self._task_waits: dict[str, anyio.Event] = {}  # task_id -> set when the task's version may have grown

    @property
    def location(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"

    # ---- plumbing ------------------------------------------------------------------------------------

    async def _run(self, call: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``call`` here: a read on the reading connection, a ``write`` in a ``BEGIN IMMEDIATE`` transaction
        on the writing connection (in a worker thread, waiting for the lock, if another process holds it). Every
        call is a checkpoint of the event loop."""
        if not write:
            result = self._read(call)
            await anyio.lowlevel.checkpoint()
            return result
        db = self._connection(self._db)
        async with self._gate:
            with self._errors("write"):
                outcome = _transaction(db, call, wait=False)
            if isinstance(outcome, _Busy):
                outcome = await anyio.to_thread.run_sync(self._patiently, db, call)
            self._writes += 1
            if self._writes % CHECKPOINT_EVERY == 0 and not self._in_memory:
                await anyio.to_thread.run_sync(self._checkpoint, db)
        await anyio.lowlevel.checkpoint()
        self._changed()
        return outcome

    def _changed(self) -> None:
        """Wake the waiters of any change (the rate limits', the feed's)."""
        self._local_change.set()
        self._local_change = anyio.Event()

    def _read(self, call: Callable[[sqlite3.Connection], T]) -> T:
        with self._errors("read"):
            return call(self._connection(self._reader))

    def _patiently(self, db: sqlite3.Connection, call: Callable[[sqlite3.Connection], T]) -> T:
        """The transaction, waiting up to ``busy_timeout`` for another process's lock (in a worker thread)."""
        with self._errors("write"):
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            try:
                return cast(T, _transaction(db, call, wait=True))
            finally:
                db.execute("PRAGMA busy_timeout=0")

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        """Copy the write-ahead log into the database file as far as no reader needs it (never waits)."""
        with self._errors("write"):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _connection(self, db: sqlite3.Connection | None) -> sqlite3.Connection:
        if db is None:
            raise JournalError(f"JournalError: the task journal at {self.location} is not open")
        return db

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
                db = self._connect(self._busy_timeout)
                reader = None
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    self._migrate(db)
                    self._cursor = int(db.execute("SELECT COALESCE(MAX(changed), 0) FROM tasks").fetchone()[0])
                    db.execute("PRAGMA busy_timeout=0")  # writes try at once; _patiently waits
                    db.execute("PRAGMA wal_autocheckpoint=0")  # _checkpoint, in a worker thread
                    reader = db if self._in_memory else self._connect(READ_BUSY_TIMEOUT)
                    if reader is not db:
                        reader.execute("PRAGMA query_only=1")
                except BaseException:
                    for connection in {db, reader} - {None}:
                        connection.close()
                    raise
                self._db, self._reader = db, reader

        await anyio.to_thread.run_sync(connect, limiter=self._gate)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        return db

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
            for connection in {self._reader, self._db} - {None}:
                connection.close()
            self._db = self._reader = None

        await anyio.to_thread.run_sync(close, limiter=self._gate)

    async def schema_version(self) -> int:
        return await self._run(lambda db: int(db.execute("PRAGMA user_version").fetchone()[0]))

    # ---- tasks ---------------------------------------------------------------------------------------

    async def insert_task(self, task: Task, request: dict[str, Any]) -> bool:
        added = await self._run(lambda db: _insert_task(db, task, request), write=True)
        self._wake(task.task_id)
        return added

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
                f" generation_seconds = COALESCE(?, generation_seconds), changed = {NEXT_CHANGE} WHERE task_id = ?",
                (task.status, task.finished_at, task.video_path, task.model_dump_json(), generation_seconds,
                 task.task_id),
            )  # fmt: skip
            if row["status"] != task.status:
                db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))
            return expected_version + 1

        version = await self._run(update, write=True)
        if version is not None:
            self._wake(task.task_id)
        return version

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

    def _wake(self, task_id: str) -> None:
        """Wake whoever waits for a change of the task."""
        event = self._task_waits.pop(task_id, None)
        if event is not None:
            event.set()

    def _task_event(self, task_id: str) -> anyio.Event:
        """The event set at the task's next change (register it before reading, so no change slips between)."""
        event = self._task_waits.get(task_id)
        if event is None:
            event = self._task_waits[task_id] = anyio.Event()
        return event

    def _probe(self) -> None:
        """At most every POLL seconds, however many wait: if any connection committed since (another process, or
        this one's writer), wake the waiters of the tasks it changed (the feed column ``changed`` says which) and
        the waiters of any change."""
        if anyio.current_time() - self._probed < POLL:
            return
        seen, cursor = self._data_version, self._cursor

        def probe(db: sqlite3.Connection) -> tuple[int, list[tuple[str, int]]]:
            data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
            if data_version == seen:
                return data_version, []
            rows = db.execute("SELECT task_id, changed FROM tasks WHERE changed > ?", (cursor,)).fetchall()
            return data_version, [(row[0], int(row[1])) for row in rows]

        data_version, changed = self._read(probe)
        self._probed = anyio.current_time()
        if data_version == seen:
            return
        self._data_version = data_version
        for task_id, number in changed:
            self._cursor = max(self._cursor, number)
            self._wake(task_id)
        self._changed()

    async def _wait_for(
        self, read: Callable[[], Any], after_version: int, timeout: float, *, task_id: str | None = None,
        poll: float = POLL,
    ) -> int:  # fmt: skip
        """Until ``read()`` exceeds ``after_version`` or ``timeout`` passes; re-read when a write of ``task_id``
        (any write, without one) or the probe of other connections' commits says it may have changed."""

        def event() -> anyio.Event:  # registered before reading, so a change in between still wakes us
            return self._task_event(task_id) if task_id is not None else self._local_change

        deadline = anyio.current_time() + max(timeout, 0.0)
        woken = event()
        version = int(await read())
        while version <= after_version:
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            with anyio.move_on_after(min(left, poll)):
                await woken.wait()
            if not woken.is_set():
                self._probe()
            if woken.is_set():
                woken = event()
                version = int(await read())
        return version

    async def wait_for_change(self, task_id: str, after_version: int, timeout: float) -> int:
        async def read() -> int:
            row = await self._run(
                lambda db: db.execute("SELECT version FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            )
            return int(row[0]) if row else 0

        return await self._wait_for(read, after_version, timeout, task_id=task_id)

    async def changes(self, after: int | None, timeout: float) -> tuple[int, list[str]]:
        async def newest() -> int:
            return int((await self._run(lambda db: db.execute("SELECT MAX(changed) FROM tasks").fetchone()))[0] or 0)

        if after is None:
            return await newest(), []
        if await self._wait_for(newest, after, timeout, poll=FEED_POLL) <= after:
            return after, []
        rows = await self._run(
            lambda db: db.execute(
                "SELECT task_id, changed FROM tasks WHERE changed > ? ORDER BY changed", (after,)
            ).fetchall()
        )
        return (int(rows[-1]["changed"]), [row["task_id"] for row in rows]) if rows else (after, [])

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
            if claimed:
                _insert_task(db, task, request)
            return bool(claimed)

        claimed = await self._run(claim, write=True)
        self._wake(task.task_id)
        return claimed

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
            if db.execute("SELECT 1 FROM slots WHERE task_id = ? AND id <> ?", (task_id, slot_id)).fetchone():
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


class _Busy:
    """A write lock held by another connection, met at the start of a transaction (nothing was done)."""


def _transaction(db: sqlite3.Connection, call: Callable[[sqlite3.Connection], T], *, wait: bool) -> T | _Busy:
    """``call`` in a ``BEGIN IMMEDIATE`` transaction; unless ``wait``, _Busy when another connection holds the write
    lock (the connection's ``busy_timeout`` says how long ``BEGIN`` waits for it)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if not wait and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_BUSY:
            return _Busy()
        raise
    try:
        result = call(db)
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return result


def _insert_task(db: sqlite3.Connection, task: Task, request: dict[str, Any]) -> bool:
    """Store a new task (version 1, with its first event); False if it is stored already."""
    added = db.execute(
        "INSERT INTO tasks (task_id, status, model, resolution, duration, created_at, finished_at,"
        f" video_path, request, data, version, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, {NEXT_CHANGE})"
        " ON CONFLICT (task_id) DO NOTHING",
        (task.task_id, task.status, task.model, task.resolution, task.duration, task.created_at or iso(utcnow()),
         task.finished_at, task.video_path, json.dumps(request), task.model_dump_json()),
    ).rowcount  # fmt: skip
    if added:
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (task.task_id, iso(utcnow()), task.status))
    return bool(added)


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
