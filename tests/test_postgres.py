"""What only the PostgreSQL store does, against a real server (``pg_url``): migrations when replicas start at
once, clear errors without the password, and notifications and connections that survive the server dropping
them. The contract every store keeps is in test_store.py."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from support import WANX, isolated_env

from wanx_mcp.store.base import JournalError
from wanx_mcp.store.postgres import LISTENER_NAME, MIGRATIONS, POOL_NAME, PostgresStore
from wanx_mcp.tasks import Status, Task

pytestmark = pytest.mark.anyio

OpenStore = Callable[[], Awaitable[PostgresStore]]


def task(task_id: str, status: Status = Status.PENDING) -> Task:
    return Task(task_id=task_id, status=status, model="wan2.2-i2v-flash", created_at="2026-11-24T10:00:00.000Z")


@pytest.fixture
async def open_store(pg_url: str) -> AsyncIterator[OpenStore]:
    stores: list[PostgresStore] = []

    async def open_one() -> PostgresStore:
        store = PostgresStore(pg_url)
        await store.open()
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


def connections(pg_url: str, application_name: str, *, terminate: bool = False) -> int:
    """How many connections to this database are named ``application_name``; with ``terminate``, the server
    drops them (as a restart or a proxy would)."""
    action = "pg_terminate_backend(pid)" if terminate else "pid"
    with psycopg.connect(pg_url, autocommit=True) as db:
        rows = db.execute(
            f"SELECT {action} FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


async def test_replicas_starting_together_apply_each_migration_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(store.open)  # without the advisory lock, all but one would fail to CREATE
        assert [await store.schema_version() for store in stores] == [len(MIGRATIONS)] * 4
    finally:
        for store in stores:
            await store.close()
    with psycopg.connect(pg_url) as db:
        applied = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert applied == [(version,) for version in range(1, len(MIGRATIONS) + 1)]


async def test_reopening_keeps_the_data_and_a_newer_schema_is_refused(pg_url: str, open_store: OpenStore) -> None:
    first = await open_store()
    await first.insert_task(task("task-keep"), {"model": "wan2.2-i2v-flash"})
    await first.close()
    again = await open_store()
    assert (await again.get("task-keep")) == task("task-keep")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(JournalError, match=r"newer than this wanx-mcp knows.*upgrade wanx-mcp"):
        await PostgresStore(pg_url).open()


async def test_errors_name_the_database_but_never_the_password(
    pg_url: str, pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = pg_server.password
    wrong = "not-the-password-" + password[:6]
    store = PostgresStore(pg_url)
    assert store.location == pg_url.replace(f":{password}@", "@") and password not in repr(store)
    failures = []
    for url in (pg_url.replace(password, wrong), pg_url.rsplit("/", 1)[0] + "/no_such_db?password=" + password):
        with pytest.raises(JournalError) as failed:
            await PostgresStore(url).open()
        failures.append(str(failed.value))
    assert "password authentication failed" in failures[0] and "no_such_db" in failures[1]
    for message in failures:
        assert message.startswith("JournalError: cannot open the task store at postgresql://wanx@127.0.0.1:")
        assert password not in message and wrong not in message
    with pytest.raises(JournalError, match="not open"):
        await store.get("task-x")
    assert password not in caplog.text and wrong not in caplog.text


async def test_waiters_are_woken_after_the_notification_connection_was_dropped(
    pg_url: str, open_store: OpenStore
) -> None:
    writer, waiter = await open_store(), await open_store()
    await writer.insert_task(task("task-drop"), {})
    woken: list[tuple[int, float]] = []

    async def wait(after: int) -> None:
        started = anyio.current_time()
        woken.append((await waiter.wait_for_change("task-drop", after, 8), anyio.current_time() - started))

    for version, status in [(1, Status.RUNNING), (2, Status.SUCCEEDED)]:
        async with anyio.create_task_group() as group:
            group.start_soon(wait, version)
            await anyio.sleep(0.2)
            with anyio.fail_after(10):
                while connections(pg_url, LISTENER_NAME) < 2:  # both stores listen (again, in the second round)
                    await anyio.sleep(0.05)
            assert connections(pg_url, LISTENER_NAME, terminate=True) == 2  # the write's NOTIFY is lost
            assert await writer.update_task(task("task-drop", status), version) == version + 1
    # the waiter re-read on reconnecting (its periodic re-check is 10 s away, its timeout 8 s)
    assert [version for version, _ in woken] == [2, 3] and all(seconds < 5 for _, seconds in woken)


async def test_pooled_connections_dropped_by_the_server_are_replaced(pg_url: str, open_store: OpenStore) -> None:
    store = await open_store()
    await store.insert_task(task("task-pool"), {})
    assert connections(pg_url, POOL_NAME, terminate=True) >= 1
    assert (await store.get("task-pool")) == task("task-pool")
    assert await store.update_task(task("task-pool", Status.RUNNING), 1) == 2


def test_commands_on_a_wrong_password_say_so_without_it(pg_url: str, pg_server: Any, tmp_path: Path) -> None:
    wrong = pg_url.replace(pg_server.password, "wrong-" + pg_server.password[:8])
    env = isolated_env(tmp_path, WANX_DATABASE_URL=wrong, WANX_SIMULATE="1")
    for command in (["tasks"], ["doctor", "--json"]):
        done = subprocess.run([*WANX, *command], env=env, capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode != 0 and "password authentication failed" in output, output
        assert "postgresql://wanx@127.0.0.1:" in output
        assert pg_server.password not in output and wrong.split(":")[2].split("@")[0] not in output
