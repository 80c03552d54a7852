"""The SQLite journal (the embedded store): durable in WAL mode, upgrades 0.1 journals in place, clear errors.

The behaviour every backend shares is in test_store.py; this is what only the SQLite file adds.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from wanx_mcp.store import JournalError
from wanx_mcp.store.sqlite import MIGRATIONS, SQLiteStore
from wanx_mcp.tasks import Status, Task

pytestmark = pytest.mark.anyio
REQUEST = {"model": "wan2.2-i2v-flash", "image": "file a.png (PNG 640x480, 3 KB)"}

#: The journal schema of wanx-mcp 0.1 as its journal.py created it (no user_version).
SCHEMA_0_1 = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT NOT NULL, resolution TEXT, duration INTEGER,
    created_at TEXT NOT NULL, finished_at TEXT, video_path TEXT, generation_seconds REAL,
    download_attempts INTEGER NOT NULL DEFAULT 0, download_error TEXT, request TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS events (task_id TEXT NOT NULL, at TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sent_at TEXT NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'sent', task_id TEXT, error TEXT
);
"""


def task(task_id: str, status: Status = Status.PENDING, **fields: object) -> Task:
    base = {"model": "wan2.2-i2v-flash", "resolution": "720P", "duration": 5, "created_at": "2026-11-24T10:00:00.000Z"}
    return Task.model_validate({"task_id": task_id, "status": status, **base, **fields})


async def opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


async def test_records_survive_reopening_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    store = await opened(path)
    await store.insert_task(task("task-0001"), REQUEST)
    await store.update_task(task("task-0001", Status.SUCCEEDED, video_path="/videos/task-0001.mp4"), 1)
    await store.close()

    reopened = await opened(path)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (await reopened.get("task-0001")).video_path == "/videos/task-0001.mp4"
    assert await reopened.schema_version() == len(MIGRATIONS)
    await reopened.close()


async def test_a_0_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:  # written by wanx-mcp 0.1
        db.executescript(SCHEMA_0_1)
        old = task("task-old", Status.RUNNING)
        db.execute(
            "INSERT INTO tasks (task_id, status, model, resolution, duration, created_at, request, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (old.task_id, old.status, old.model, old.resolution, old.duration, old.created_at, '{"prompt": "p"}',
             old.model_dump_json()),
        )  # fmt: skip
        db.execute("INSERT INTO events VALUES ('task-old', '2026-11-24T10:00:00.000Z', 'RUNNING')")
        db.execute("INSERT INTO submissions (sent_at, model, request, outcome) VALUES (?, ?, ?, 'ambiguous')",
                   ("2026-11-24T09:59:59.000Z", "wan2.2-i2v-flash", '{"prompt": "lost"}'))  # fmt: skip
    db.close()

    store = await opened(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        record = await store.record("task-old")
        assert record is not None and record.version == 1 and record.task.status is Status.RUNNING
        assert [t.task_id for t in await store.unfinished()] == ["task-old"]
        assert await store.request_of("task-old") == {"prompt": "p"}
        assert await store.update_task(task("task-old", Status.SUCCEEDED), 1) == 2
        assert [status for _, status in await store.events("task-old")] == ["RUNNING", "SUCCEEDED"]
        (lost,) = await store.unresolved_submissions(0.0)  # old ambiguous submissions stay findable
        assert (lost.request, lost.owner, lost.estimated_cost_cny) == ({"prompt": "lost"}, None, None)
    finally:
        await store.close()
    again = await opened(path)  # opening once more applies nothing twice
    assert await again.schema_version() == len(MIGRATIONS)
    await again.close()


async def test_processes_opening_a_new_journal_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    script = (
        "import anyio, sys\nfrom pathlib import Path\nfrom wanx_mcp.store.sqlite import SQLiteStore\n"
        "async def main():\n    s = SQLiteStore(Path(sys.argv[1]))\n    await s.open()\n"
        "    await s.insert_task(__import__('wanx_mcp.tasks').tasks.Task(task_id=sys.argv[2], status='PENDING',"
        " model='m', created_at='2026-11-24T10:00:00.000Z'), {})\n    await s.close()\nanyio.run(main)\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, str(path), f"task-p{n}"]) for n in range(4)]
    assert [process.wait(60) for process in processes] == [0] * 4
    store = await opened(path)
    assert sorted(t.task_id for t in await store.list_tasks()) == [f"task-p{n}" for n in range(4)]
    await store.close()


async def test_an_unusable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(JournalError, match="cannot open the task journal") as caught:
        await opened(blocker / "journal.sqlite3")
    assert str(blocker) in str(caught.value)


async def test_a_locked_journal_fails_the_write_clearly_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    store = SQLiteStore(path, busy_timeout=0.5)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing (and takes too long)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        with pytest.raises(JournalError, match=r"cannot write the task journal.*locked"):
            await store.insert_task(task("task-locked"), REQUEST)
        group.cancel_scope.cancel()
    assert ticks >= 20  # the event loop kept running while the write waited
    other.rollback()
    assert await store.insert_task(task("task-locked"), REQUEST)  # and writing works again at once
    other.close()
    await store.close()
