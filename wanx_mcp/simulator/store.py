"""A simulator's memory on disk: one SQLite file that several simulator processes share.

Every use is one ``BEGIN IMMEDIATE`` transaction, so a process always reads fresh state under the file's
write lock and writes its changes before anyone else reads. Rows hold JSON with wall-clock epoch times;
``version`` counts commits that changed something, so a process reloads only when another one wrote.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lanes (lane TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (task_id TEXT NOT NULL, field TEXT NOT NULL, url TEXT NOT NULL,
                                   PRIMARY KEY (task_id, field));
INSERT OR IGNORE INTO meta VALUES ('version', 0);
"""
BUSY_TIMEOUT = 30.0
logger = logging.getLogger(__name__)


class StateFile:
    """The SQLite file at ``path``; use it only inside ``transaction()`` and from one thread at a time."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database: set it aside, start afresh
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.replace(aside)
            logger.warning("simulator state file %s was unreadable (%s); moved it to %s", path, exc, aside.name)
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a simulator need not survive power loss
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM tasks").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the file's write lock for the block; commit at its end, roll back on an exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def version(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0]

    def bump(self) -> int:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
        return self.version()

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, oldest row first."""
        return [json.loads(data) for (data,) in self._db.execute("SELECT data FROM tasks ORDER BY rowid")]

    def lanes(self) -> dict[str, dict[str, Any]]:
        return {lane: json.loads(data) for lane, data in self._db.execute("SELECT lane, data FROM lanes")}

    def put_tasks(self, rows: Iterable[tuple[str, str]]) -> None:
        """Insert or replace ``(task_id, json)`` rows."""
        self._db.executemany(
            "INSERT INTO tasks VALUES (?, ?) ON CONFLICT (task_id) DO UPDATE SET data = excluded.data", rows
        )

    def put_lanes(self, rows: Iterable[tuple[str, str]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO lanes VALUES (?, ?)", rows)

    def drop_tasks(self, task_ids: list[str]) -> None:
        for table in ("tasks", "images"):
            self._db.executemany(f"DELETE FROM {table} WHERE task_id = ?", [(i,) for i in task_ids])

    def put_images(self, task_id: str, images: dict[str, str]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?)", [(task_id, f, url) for f, url in images.items()]
        )

    def images(self, task_id: str) -> dict[str, str]:
        rows = self._db.execute("SELECT field, url FROM images WHERE task_id = ?", (task_id,))
        return dict(rows.fetchall())

    def clear(self) -> None:
        for table in ("tasks", "lanes", "images"):
            self._db.execute(f"DELETE FROM {table}")
