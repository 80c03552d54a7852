"""The shared task store (interface in ``base``) and how to open the configured one."""

from __future__ import annotations

from ..config import Settings
from .base import JournalError, Lease, Record, Submission, TaskStore, new_owner_id

__all__ = ["JournalError", "Lease", "Record", "Submission", "TaskStore", "new_owner_id", "open_store"]


async def open_store(settings: Settings) -> TaskStore:
    """The opened store ``settings`` name: PostgreSQL for a ``postgresql://`` ``WANX_DATABASE_URL``, else the
    SQLite journal in ``WANX_DATA_DIR``. Raises ``JournalError`` if it cannot be opened."""
    url = settings.database_url
    if url and url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # psycopg is needed only then

        store: TaskStore = PostgresStore(url)
    else:
        from .sqlite import SQLiteStore

        store = SQLiteStore(settings.journal_path)
    await store.open()
    return store
