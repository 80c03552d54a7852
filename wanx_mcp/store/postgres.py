"""The task store on PostgreSQL, for HTTP replicas on several machines (``WANX_DATABASE_URL=postgresql://...``).

psycopg 3 (async) with its connection pool; every method is one short transaction. Each change is announced
with ``NOTIFY`` in the transaction that makes it, and one ``LISTEN`` connection per store wakes this process's
waiters, so a waiter in any replica learns of another replica's write when it commits (waiters also re-check
every ``RECHECK`` seconds, and at once after the listening connection was lost). Migrations are versioned
(table ``schema_migrations``) and applied at open under an advisory lock, so replicas starting together apply
each one exactly once. Read-then-write changes of a rate-limit family are serialised by an advisory lock per
family. Record times (``sent_at``, events) are the database server's clock, the same for every replica.

The URL's password never appears in :attr:`PostgresStore.location`, in errors or in logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..tasks import Status, Task, iso, utcnow
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

log = logging.getLogger(__name__)

#: Seconds between two checks of a waited-for version when no notification came (one may have been lost).
RECHECK = 10.0
CONNECT_TIMEOUT = 10
POOL_SIZE = 10
#: Slack when comparing times, so float rounding does not move a send out of its window.
EPSILON = 1e-6
#: First key of this store's advisory locks: (LOCK_SPACE, 0) guards migrations; a family's slots and queue take
#: (SLOTS_LOCK, hash of the family), its pacing (SENDS_LOCK, hash of the family); budget checks (BUDGET_LOCK, 0).
LOCK_SPACE = 0x77616E78
SLOTS_LOCK, SENDS_LOCK, BUDGET_LOCK = LOCK_SPACE + 1, LOCK_SPACE + 2, LOCK_SPACE + 3
#: ``application_name`` of the pooled connections and of the one that listens for notifications.
POOL_NAME, LISTENER_NAME = "wanx-mcp", "wanx-mcp notifications"
TASKS_CHANNEL = "wanx_task"
LIMITS_CHANNEL = "wanx_limits"

#: Schema versions: each script runs once, in one transaction, and is recorded in ``schema_migrations``.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE tasks (
        task_id text PRIMARY KEY, status text NOT NULL, model text NOT NULL, resolution text, duration integer,
        created_at text NOT NULL, finished_at text, video_path text, generation_seconds double precision,
        download_attempts integer NOT NULL DEFAULT 0, download_error text, request jsonb NOT NULL,
        data text NOT NULL, version bigint NOT NULL DEFAULT 1);
    CREATE INDEX tasks_by_created ON tasks (created_at);
    CREATE INDEX tasks_by_status ON tasks (status);
    CREATE TABLE events (
        id bigserial PRIMARY KEY, task_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),
        status text NOT NULL);
    CREATE INDEX events_by_task ON events (task_id, id);
    CREATE TABLE submissions (
        id bigserial PRIMARY KEY, sent_at timestamptz NOT NULL DEFAULT clock_timestamp(), model text NOT NULL,
        request jsonb NOT NULL, outcome text NOT NULL DEFAULT 'sent'
        CHECK (outcome IN ('sent', 'created', 'failed', 'ambiguous', 'recovered')),
        owner text, task_id text, error text, estimated_cost_cny double precision);
    CREATE INDEX submissions_by_outcome ON submissions (outcome);
    CREATE INDEX submissions_by_sent ON submissions (sent_at);
    CREATE TABLE owners (owner text PRIMARY KEY, expires double precision NOT NULL);
    CREATE TABLE leases (
        task_id text PRIMARY KEY, owner text NOT NULL, acquired double precision NOT NULL,
        expires double precision NOT NULL);
    CREATE INDEX leases_by_owner ON leases (owner);
    CREATE TABLE tickets (id bigserial PRIMARY KEY, family text NOT NULL, owner text NOT NULL);
    CREATE INDEX tickets_by_family ON tickets (family, id);
    CREATE TABLE slots (
        id bigserial PRIMARY KEY, family text NOT NULL, owner text NOT NULL, task_id text UNIQUE,
        expires double precision);
    CREATE INDEX slots_by_family ON slots (family);
    CREATE TABLE sends (family text NOT NULL, at double precision NOT NULL);
    CREATE INDEX sends_by_family ON sends (family, at);
    CREATE TABLE limits (family text PRIMARY KEY, version bigint NOT NULL);
    CREATE FUNCTION wanx_reserve_send(fam text, per_window integer, win double precision, moment double precision)
    RETURNS double precision LANGUAGE plpgsql AS $$
    DECLARE
        counted integer;
        oldest double precision;
    BEGIN
        PERFORM pg_advisory_xact_lock({SENDS_LOCK}, hashtext(fam));
        DELETE FROM sends WHERE family = fam AND at <= moment - win + {EPSILON!r};
        SELECT count(*), min(at) INTO counted, oldest FROM sends WHERE family = fam;
        IF counted < per_window THEN
            INSERT INTO sends VALUES (fam, moment);
            RETURN 0;
        END IF;
        RETURN greatest(oldest + win - moment, {EPSILON!r});
    END $$;
    """,
]

TASK_COLUMNS = "task_id, status, model, resolution, duration, created_at, finished_at, video_path, request, data"
SUBMISSION_COLUMNS = (
    "id, to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), model, request, outcome, owner,"
    " task_id, error, estimated_cost_cny"
)
LIVE_OWNERS = "SELECT owner FROM owners WHERE expires > %(now)s"
#: A slot is in use unless its hold expired, or it is an in-flight create of an owner that lapsed.
SLOT_IN_USE = (
    "(expires IS NULL OR expires > %(now)s)"
    f" AND (task_id IS NOT NULL OR expires IS NOT NULL OR owner IN ({LIVE_OWNERS}))"
)

#: take_slot's statements: whether the ticket is live and how many live ones are ahead of it; dropping lapsed
#: tickets and slots (how many); the line's first ticket, its owner, the slots in use, whether the ticket still
#: exists; turning the ticket into a slot.
TICKETS_AHEAD = (
    f"SELECT EXISTS (SELECT 1 FROM tickets WHERE id = %(ticket)s AND owner IN ({LIVE_OWNERS})),"
    " (SELECT count(*) FROM tickets WHERE family = %(family)s AND id < %(ticket)s"
    f" AND owner IN ({LIVE_OWNERS}))"
)
FREE_LAPSED = (
    f"WITH t AS (DELETE FROM tickets WHERE family = %(family)s AND owner NOT IN ({LIVE_OWNERS}) RETURNING 1),"
    f" s AS (DELETE FROM slots WHERE family = %(family)s AND NOT ({SLOT_IN_USE}) RETURNING 1)"
    " SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM s)"
)
LINE_STATE = (
    "SELECT f.id, f.owner, (SELECT count(*) FROM slots WHERE family = %(family)s),"
    " EXISTS (SELECT 1 FROM tickets WHERE id = %(ticket)s)"
    " FROM (SELECT 1) one LEFT JOIN LATERAL"
    " (SELECT id, owner FROM tickets WHERE family = %(family)s ORDER BY id LIMIT 1) f ON true"
)
TAKE = (
    "WITH d AS (DELETE FROM tickets WHERE id = %(ticket)s)"
    " INSERT INTO slots (family, owner) VALUES (%(family)s, %(owner)s) RETURNING id"
)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


def redact(url: str) -> str:
    """``url`` (a ``postgresql://`` URL or a ``key=value`` conninfo) without its password."""
    if "://" not in url:
        params = {k: v for k, v in conninfo_to_dict(url).items() if k != "password"}
        return make_conninfo(**params)  # type: ignore[arg-type]
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class PostgresStore(TaskStore):
    """The store in one PostgreSQL database, given by a ``postgresql://`` URL (see the module docstring)."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self._url = url
        self._location = redact(url)
        try:
            password = str(conninfo_to_dict(url).get("password") or "")
        except psycopg.ProgrammingError:  # not a valid URL: open() says so
            password = ""
        self._secrets = {s for s in (password, quote(password, safe="")) if s}
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._listener: Connection | None = None
        self._listening: asyncio.Task[None] | None = None
        self._waiters: weakref.WeakValueDictionary[tuple[str, str], anyio.Event] = weakref.WeakValueDictionary()

    @property
    def location(self) -> str:
        return self._location

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # ---- plumbing ------------------------------------------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> JournalError:
        message = str(exc).strip() or type(exc).__name__
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return JournalError(f"JournalError: cannot {doing} the task store at {self.location}: {message}")

    async def _connect(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=LISTENER_NAME
            )
        except psycopg.Error as exc:
            raise self._error("open", exc) from None

    @asynccontextmanager
    async def _transaction(self, *, atomic: bool = True) -> AsyncIterator[Connection]:
        """A pooled connection, in a transaction committed at the end (rolled back on an error); with ``atomic``
        False, in autocommit, for one statement (its own transaction, without the round trips of BEGIN/COMMIT).

        Shielded from cancellation: a caller cancelled meanwhile (a timeout) gets the result all the same and is
        cancelled at its next checkpoint, so what was committed is never lost on the way back (a slot taken, a
        ticket drawn), and no connection is closed for a query interrupted half-way."""
        if self._pool is None:
            raise JournalError(f"JournalError: the task store at {self.location} is not open")
        with anyio.CancelScope(shield=True):
            try:
                async with self._pool.connection() as conn:
                    if not atomic:
                        yield conn
                        return
                    async with conn.transaction():
                        yield conn
            except (psycopg.Error, PoolTimeout) as exc:
                raise self._error("use", exc) from None

    async def _one(self, query: str, params: Any = None) -> tuple[Any, ...] | None:
        """The first row of one statement (its own transaction)."""
        async with self._transaction(atomic=False) as conn:
            return await (await conn.execute(query, params)).fetchone()

    async def _all(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of one statement (its own transaction)."""
        async with self._transaction(atomic=False) as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def _execute(self, query: str, params: Any = None) -> None:
        """One statement without rows (its own transaction)."""
        async with self._transaction(atomic=False) as conn:
            await conn.execute(query, params)

    async def open(self) -> None:
        listener = await self._connect()
        try:
            await self._migrate(listener)
            await self._subscribe(listener)
            pool = AsyncConnectionPool(
                self._url, min_size=2, max_size=self._pool_size, open=False, name=POOL_NAME,
                check=AsyncConnectionPool.check_connection,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": POOL_NAME},
            )  # fmt: skip
            try:
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            except PoolTimeout as exc:
                await pool.close()
                raise self._error("open", exc) from None
        except BaseException:
            await listener.close()
            raise
        self._pool, self._listener = pool, listener
        self._listening = asyncio.create_task(self._listen(), name=f"notifications of {self.location}")

    async def _migrate(self, conn: Connection) -> None:
        try:
            await conn.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_SPACE,))
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                applied = await _applied_version(conn)
                if applied > len(MIGRATIONS):
                    raise JournalError(
                        f"JournalError: the task store at {self.location} has schema version {applied}, newer than"
                        f" this wanx-mcp knows ({len(MIGRATIONS)}): upgrade wanx-mcp"
                    )
                for version, script in enumerate(MIGRATIONS, start=1):
                    if version > applied:
                        async with conn.transaction():
                            await conn.execute(script)
                            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                        log.info("task store %s: applied schema version %d", self.location, version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, 0)", (LOCK_SPACE,))
        except psycopg.Error as exc:
            raise self._error("migrate", exc) from None

    @staticmethod
    async def _subscribe(conn: Connection) -> None:
        await conn.execute(f"LISTEN {TASKS_CHANNEL}")
        await conn.execute(f"LISTEN {LIMITS_CHANNEL}")

    async def _listen(self) -> None:
        """Wake this process's waiters on every notification; after losing the connection, reconnect and wake
        them all (they re-read what they wait for)."""
        backoff = 0.5
        while True:
            try:
                if self._listener is None:
                    listener = await self._connect()
                    await self._subscribe(listener)
                    self._listener = listener
                    self._wake_all()
                async for notify in self._listener.notifies():
                    backoff = 0.5
                    self._wake(notify.channel, notify.payload)
            except (psycopg.Error, JournalError) as exc:
                log.warning("lost the change notifications of %s; reconnecting: %s", self.location,
                            self._error("listen to", exc))  # fmt: skip
                if self._listener is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._listener.close()
                self._listener = None
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECHECK)

    def _wake(self, channel: str, key: str) -> None:
        event = self._waiters.pop((channel, key), None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for channel, key in list(self._waiters.keys()):
            self._wake(channel, key)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        async with self._transaction() as conn:
            return await _applied_version(conn)

    # ---- tasks ---------------------------------------------------------------------------------------

    @staticmethod
    async def _insert(conn: Connection, task: Task, request: dict[str, Any]) -> bool:
        added = (await conn.execute(
            f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id) DO NOTHING",
            (task.task_id, task.status, task.model, task.resolution, task.duration, task.created_at or iso(utcnow()),
             task.finished_at, task.video_path, Jsonb(request), task.model_dump_json()),
        )).rowcount  # fmt: skip
        if added:
            await conn.execute("INSERT INTO events (task_id, status) VALUES (%s, %s)", (task.task_id, task.status))
            await _notify(conn, TASKS_CHANNEL, task.task_id)
        return bool(added)

    async def insert_task(self, task: Task, request: dict[str, Any]) -> bool:
        async with self._transaction() as conn:
            return await self._insert(conn, task, request)

    async def record(self, task_id: str) -> Record | None:
        row = await self._one(
            "SELECT data, version, download_attempts, download_error FROM tasks WHERE task_id = %s", (task_id,)
        )
        return None if row is None else Record(Task.model_validate_json(row[0]), int(row[1]), row[2], row[3])

    async def update_task(
        self, task: Task, expected_version: int, *, generation_seconds: float | None = None
    ) -> int | None:
        async with self._transaction() as conn:
            row = await (await conn.execute(
                "SELECT status FROM tasks WHERE task_id = %s AND version = %s FOR UPDATE",
                (task.task_id, expected_version),
            )).fetchone()  # fmt: skip
            if row is None:
                return None
            await conn.execute(
                "UPDATE tasks SET status = %s, finished_at = %s, video_path = %s, data = %s, version = version + 1,"
                " generation_seconds = COALESCE(%s, generation_seconds) WHERE task_id = %s",
                (task.status, task.finished_at, task.video_path, task.model_dump_json(), generation_seconds,
                 task.task_id),
            )  # fmt: skip
            if row[0] != task.status:
                await conn.execute("INSERT INTO events (task_id, status) VALUES (%s, %s)", (task.task_id, task.status))
            await _notify(conn, TASKS_CHANNEL, task.task_id)
            return expected_version + 1

    async def request_of(self, task_id: str) -> dict[str, Any] | None:
        row = await self._one("SELECT request FROM tasks WHERE task_id = %s", (task_id,))
        return None if row is None else dict(row[0])

    async def list_tasks(self, status: Status | None = None, limit: int = 20) -> list[Task]:
        where, params = ("WHERE status = %s", (str(status),)) if status is not None else ("", ())
        rows = await self._all(f"SELECT data FROM tasks {where} ORDER BY created_at DESC LIMIT %s", (*params, limit))
        return [Task.model_validate_json(row[0]) for row in rows]

    async def unfinished(self, *, unleased_at: float | None = None) -> list[Task]:
        query = (
            "SELECT data FROM tasks t WHERE (status IN ('PENDING', 'RUNNING')"
            " OR (status = 'SUCCEEDED' AND video_path IS NULL))"
        )
        params: tuple[Any, ...] = ()
        if unleased_at is not None:
            query += " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.task_id = t.task_id AND l.expires > %s)"
            params = (unleased_at,)
        rows = await self._all(query + " ORDER BY created_at", params)
        return [Task.model_validate_json(row[0]) for row in rows]

    async def events(self, task_id: str) -> list[tuple[str, str]]:
        rows = await self._all(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), status FROM events"
            " WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        return [(row[0], row[1]) for row in rows]

    async def generation_seconds(self, model: str, resolution: str | None, duration: int | None,
                                 limit: int = 20) -> list[float]:  # fmt: skip
        rows = await self._all(
            "SELECT generation_seconds FROM tasks WHERE status = 'SUCCEEDED' AND model = %s"
            " AND resolution IS NOT DISTINCT FROM %s AND duration IS NOT DISTINCT FROM %s::integer"
            " AND generation_seconds IS NOT NULL ORDER BY finished_at DESC LIMIT %s",
            (model, resolution, duration, limit),
        )
        return [float(row[0]) for row in rows]

    async def note_download_failure(self, task_id: str, error: str) -> int:
        row = await self._one(
            "UPDATE tasks SET download_attempts = download_attempts + 1, download_error = %s WHERE task_id = %s"
            " RETURNING download_attempts",
            (error, task_id),
        )
        return 0 if row is None else int(row[0])

    # ---- change checks -------------------------------------------------------------------------------

    async def _wait_for(
        self, channel: str, key: str, read: Callable[[], Awaitable[int]], after_version: int, timeout: float
    ) -> int:
        deadline = anyio.current_time() + max(timeout, 0.0)
        while True:
            event = self._waiters.get((channel, key))
            if event is None:  # registered before reading, so a change committed meanwhile still wakes us
                event = self._waiters[(channel, key)] = anyio.Event()
            version = await read()
            left = deadline - anyio.current_time()
            if version > after_version or left <= 0:
                return version
            with anyio.move_on_after(min(left, RECHECK)):
                await event.wait()

    async def _task_version(self, task_id: str) -> int:
        row = await self._one("SELECT version FROM tasks WHERE task_id = %s", (task_id,))
        return 0 if row is None else int(row[0])

    async def wait_for_change(self, task_id: str, after_version: int, timeout: float) -> int:
        return await self._wait_for(TASKS_CHANNEL, task_id, lambda: self._task_version(task_id), after_version, timeout)

    async def limits_version(self, family: str) -> int:
        row = await self._one("SELECT version FROM limits WHERE family = %s", (family,))
        return 0 if row is None else int(row[0])

    async def wait_for_limits(self, family: str, after_version: int, timeout: float) -> int:
        return await self._wait_for(LIMITS_CHANNEL, family, lambda: self.limits_version(family), after_version, timeout)

    # ---- submissions ---------------------------------------------------------------------------------

    async def record_submission(self, model: str, request: dict[str, Any], *, owner: str,
                                estimated_cost_cny: float | None = None) -> int:  # fmt: skip
        row = await self._one(
            "INSERT INTO submissions (model, request, owner, estimated_cost_cny) VALUES (%s, %s, %s, %s) RETURNING id",
            (model, Jsonb(request), owner, estimated_cost_cny),
        )
        assert row is not None
        return int(row[0])

    async def reserve_submission(self, model: str, request: dict[str, Any], *, owner: str, estimated_cost_cny: float,
                                 budget: float, window: timedelta = BUDGET_WINDOW) -> int:  # fmt: skip
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (BUDGET_LOCK,))  # one reservation at a time
            counted = await (await conn.execute(
                "SELECT s.sent_at, s.estimated_cost_cny FROM submissions s LEFT JOIN tasks t ON t.task_id = s.task_id"
                " WHERE s.sent_at >= clock_timestamp() - %s AND s.outcome <> 'failed'"
                " AND s.estimated_cost_cny IS NOT NULL AND (t.status IS NULL OR t.status NOT IN ('FAILED', 'CANCELED'))"
                " ORDER BY s.sent_at",
                (window,),
            )).fetchall()  # fmt: skip
            refusal = over_budget([(row[0], float(row[1])) for row in counted], estimated_cost_cny, budget, window)
            if refusal is not None:
                raise refusal  # rolls the transaction back: nothing written
            row = await (await conn.execute(
                "INSERT INTO submissions (model, request, owner, estimated_cost_cny) VALUES (%s, %s, %s, %s)"
                " RETURNING id",
                (model, Jsonb(request), owner, estimated_cost_cny),
            )).fetchone()  # fmt: skip
            assert row is not None
            return int(row[0])

    async def finish_submission(self, submission_id: int, outcome: str, *, task_id: str | None = None,
                                error: str | None = None) -> None:  # fmt: skip
        if outcome not in SUBMISSION_OUTCOMES:
            raise ValueError(f"unknown submission outcome {outcome!r}; known: {SUBMISSION_OUTCOMES}")
        await self._execute(
            "UPDATE submissions SET outcome = %s, task_id = %s, error = %s WHERE id = %s",
            (outcome, task_id, error, submission_id),
        )

    async def _submissions(self, where: str, params: dict[str, Any], order: str, limit: int | None = None,
                           ) -> list[Submission]:  # fmt: skip
        rows = await self._all(
            f"SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE {where} ORDER BY id {order} LIMIT %(limit)s",
            params | {"limit": limit},
        )
        return [
            Submission(id=int(r[0]), sent_at=r[1], model=r[2], request=dict(r[3]), outcome=r[4], owner=r[5],
                       task_id=r[6], error=r[7], estimated_cost_cny=r[8])
            for r in rows
        ]  # fmt: skip

    async def submissions(self, outcome: str | None = None, limit: int = 50) -> list[Submission]:
        where = "outcome = %(outcome)s" if outcome else "true"
        return await self._submissions(where, {"outcome": outcome}, "DESC", limit)

    async def unresolved_submissions(self, now: float) -> list[Submission]:
        where = f"outcome = 'ambiguous' OR (outcome = 'sent' AND (owner IS NULL OR owner NOT IN ({LIVE_OWNERS})))"
        return await self._submissions(where, {"now": now}, "ASC")

    async def adopt(self, submission_id: int, task: Task, request: dict[str, Any]) -> bool:
        async with self._transaction() as conn:
            claimed = (await conn.execute(
                "UPDATE submissions SET outcome = 'recovered', task_id = %s"
                " WHERE id = %s AND outcome IN ('ambiguous', 'sent')",
                (task.task_id, submission_id),
            )).rowcount  # fmt: skip
            if claimed:
                await self._insert(conn, task, request)
            return bool(claimed)

    async def spend_since(self, moment: datetime) -> float:
        row = await self._one(
            "SELECT COALESCE(SUM(s.estimated_cost_cny), 0) FROM submissions s LEFT JOIN tasks t"
            " ON t.task_id = s.task_id WHERE s.sent_at >= %s AND s.outcome <> 'failed'"
            " AND (t.status IS NULL OR t.status NOT IN ('FAILED', 'CANCELED'))",
            (moment,),
        )
        return 0.0 if row is None else float(row[0])

    # ---- owners and leases ---------------------------------------------------------------------------

    async def heartbeat(self, owner: str, ttl: float, now: float) -> None:
        await self._execute(
            "INSERT INTO owners VALUES (%s, %s) ON CONFLICT (owner) DO UPDATE SET expires = excluded.expires",
            (owner, now + ttl),
        )

    async def live_owners(self, now: float) -> list[str]:
        return [row[0] for row in await self._all(LIVE_OWNERS + " ORDER BY owner", {"now": now})]

    async def retire(self, owner: str) -> None:
        async with self._transaction() as conn:
            params = {"owner": owner}
            await conn.execute("DELETE FROM owners WHERE owner = %(owner)s", params)
            await conn.execute("DELETE FROM leases WHERE owner = %(owner)s", params)
            tickets = await (await conn.execute(
                "DELETE FROM tickets WHERE owner = %(owner)s RETURNING family", params)).fetchall()  # fmt: skip
            slots = await (await conn.execute(
                "DELETE FROM slots WHERE owner = %(owner)s AND task_id IS NULL AND expires IS NULL RETURNING family",
                params,
            )).fetchall()  # fmt: skip
            for family in {row[0] for row in [*tickets, *slots]}:
                await _bump(conn, family)

    async def acquire_lease(self, task_id: str, owner: str, ttl: float, now: float) -> bool:
        row = await self._one(
            "INSERT INTO leases AS l VALUES (%(task)s, %(owner)s, %(now)s, %(expires)s) ON CONFLICT (task_id)"
            " DO UPDATE SET owner = excluded.owner, expires = excluded.expires,"
            " acquired = CASE WHEN l.owner = excluded.owner AND l.expires > %(now)s THEN l.acquired"
            " ELSE excluded.acquired END"
            " WHERE l.owner = excluded.owner OR l.expires <= %(now)s RETURNING owner",
            {"task": task_id, "owner": owner, "now": now, "expires": now + ttl},
        )
        return row is not None

    async def renew_leases(self, owner: str, ttl: float, now: float) -> list[str]:
        rows = await self._all(
            "UPDATE leases SET expires = %s WHERE owner = %s AND expires > %s RETURNING task_id",
            (now + ttl, owner, now),
        )
        return [row[0] for row in rows]

    async def release_lease(self, task_id: str, owner: str) -> None:
        await self._execute("DELETE FROM leases WHERE task_id = %s AND owner = %s", (task_id, owner))

    async def leases(self, now: float) -> list[Lease]:
        rows = await self._all(
            "SELECT task_id, owner, acquired, expires FROM leases WHERE expires > %s ORDER BY acquired", (now,)
        )
        return [Lease(row[0], row[1], row[2], row[3]) for row in rows]

    # ---- account-wide rate limits --------------------------------------------------------------------

    async def enqueue(self, family: str, owner: str, now: float) -> int:
        async with self._transaction() as conn:
            row = await (
                await conn.execute("INSERT INTO tickets (family, owner) VALUES (%s, %s) RETURNING id", (family, owner))
            ).fetchone()
            await _bump(conn, family)
        assert row is not None
        return int(row[0])

    async def take_slot(self, family: str, ticket: int, limit: int, now: float) -> int | None:
        params = {"family": family, "now": now, "ticket": ticket, "limit": limit}
        async with self._transaction() as conn:
            # most waiters are far back in line: one read tells them, without the family's lock or any write (the
            # few nearest the front wait for the lock, so the next one in line is served as soon as a slot frees)
            mine, ahead = await _fetch(conn, TICKETS_AHEAD, params)
            if mine and ahead >= limit:
                return None
            await _lock(conn, family)
            changed = (await _fetch(conn, FREE_LAPSED, params))[0]
            first, owner, in_use, exists = await _fetch(conn, LINE_STATE, params)
            slot = None
            if first == ticket and in_use < limit:
                slot = (await _fetch(conn, TAKE, params | {"owner": owner}))[0]
            if changed or slot is not None:
                await _bump(conn, family)
        if not exists:
            raise LookupError(f"ticket {ticket} of {family} is gone: its owner's heartbeat lapsed")
        return None if slot is None else int(slot)

    async def _change_slots(self, statement: str, params: tuple[Any, ...]) -> bool:
        """Run one statement ``... RETURNING family`` and bump the families it touched; True if it touched any."""
        async with self._transaction() as conn:
            families = {row[0] for row in await (await conn.execute(statement, params)).fetchall()}
            for family in families:
                await _bump(conn, family)
        return bool(families)

    async def leave_queue(self, ticket: int) -> None:
        await self._change_slots("DELETE FROM tickets WHERE id = %s RETURNING family", (ticket,))

    async def queued(self, family: str, now: float) -> int:
        row = await self._one(
            f"SELECT count(*) FROM tickets WHERE family = %(family)s AND owner IN ({LIVE_OWNERS})",
            {"family": family, "now": now},
        )
        return 0 if row is None else int(row[0])

    async def assign_slot(self, slot_id: int, task_id: str) -> None:
        async with self._transaction() as conn:
            row = await (await conn.execute("SELECT family FROM slots WHERE id = %s", (slot_id,))).fetchone()
            if row is None:
                return
            await _lock(conn, row[0])
            if await (await conn.execute("SELECT 1 FROM slots WHERE task_id = %s", (task_id,))).fetchone():
                await conn.execute("DELETE FROM slots WHERE id = %s", (slot_id,))
            else:
                await conn.execute("UPDATE slots SET task_id = %s, expires = NULL WHERE id = %s", (task_id, slot_id))
            await _bump(conn, row[0])

    async def hold_slot(self, slot_id: int, until: float) -> None:
        await self._change_slots("UPDATE slots SET expires = %s WHERE id = %s RETURNING family", (until, slot_id))

    async def free_slot(self, slot_id: int) -> None:
        await self._change_slots("DELETE FROM slots WHERE id = %s RETURNING family", (slot_id,))

    async def track_task(self, family: str, task_id: str, owner: str) -> None:
        await self._change_slots(
            "INSERT INTO slots (family, owner, task_id) VALUES (%s, %s, %s) ON CONFLICT (task_id) DO NOTHING"
            " RETURNING family",
            (family, owner, task_id),
        )

    async def release_task(self, task_id: str) -> bool:
        return await self._change_slots("DELETE FROM slots WHERE task_id = %s RETURNING family", (task_id,))

    async def running(self, family: str, now: float) -> int:
        row = await self._one(
            f"SELECT count(*) FROM slots WHERE family = %(family)s AND {SLOT_IN_USE}", {"family": family, "now": now}
        )
        return 0 if row is None else int(row[0])

    async def slot_holders(self, family: str, now: float) -> list[str]:
        rows = await self._all(
            "SELECT task_id FROM slots WHERE family = %s AND task_id IS NOT NULL ORDER BY id", (family,)
        )
        return [row[0] for row in rows]

    async def reserve_send(self, family: str, per_window: int, window: float, now: float) -> float:
        # one round trip (the store's own function), so the reservation is as close as can be to the sending
        row = await self._one("SELECT wanx_reserve_send(%s, %s, %s, %s)", (family, per_window, window, now))
        assert row is not None
        return float(row[0])

async def _applied_version(conn: Connection) -> int:
    row = await (await conn.execute("SELECT COALESCE(max(version), 0) FROM schema_migrations")).fetchone()
    return 0 if row is None else int(row[0])


async def _fetch(conn: Connection, query: str, params: Any) -> tuple[Any, ...]:
    """The one row ``query`` returns."""
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row


async def _notify(conn: Connection, channel: str, key: str) -> None:
    """Announce a change of ``key`` on ``channel`` when the transaction commits."""
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, key))


async def _lock(conn: Connection, family: str) -> None:
    """Serialise this transaction with every other read-then-write of ``family``'s slots and queue, until it ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SLOTS_LOCK, family))


async def _bump(conn: Connection, family: str) -> None:
    """Note a change of the family's rate-limit state (for :meth:`PostgresStore.wait_for_limits`)."""
    await conn.execute(
        "WITH b AS (INSERT INTO limits AS l VALUES (%s, 1) ON CONFLICT (family) DO UPDATE SET version = l.version + 1"
        " RETURNING family) SELECT pg_notify(%s, family) FROM b",
        (family, LIMITS_CHANNEL),
    )
