"""The task journal: durable records, status history, what the watcher still owes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wanx_mcp.journal import Journal, JournalError
from wanx_mcp.tasks import Status, Task


def task(task_id: str, status: Status = Status.PENDING, **fields: object) -> Task:
    return Task(task_id=task_id, status=status, model="wan2.2-i2v-flash", resolution="720P", duration=5,
                created_at="2026-11-24T10:00:00.000Z", **fields)  # fmt: skip


def test_records_survive_reopening_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.insert(task("task-0001"), {"model": "wan2.2-i2v-flash", "image": "file a.png (PNG 640x480, 3 KB)"})
    journal.update(task("task-0001", Status.RUNNING))
    journal.update(task("task-0001", Status.SUCCEEDED, video_path="/videos/task-0001.mp4"), generation_seconds=42.0)
    journal.close()

    reopened = Journal(path)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reopened.get("task-0001").video_path == "/videos/task-0001.mp4"
    assert [status for _, status in reopened.events("task-0001")] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert reopened.request_of("task-0001") == {"model": "wan2.2-i2v-flash", "image": "file a.png (PNG 640x480, 3 KB)"}
    assert reopened.generation_seconds("wan2.2-i2v-flash", "720P", 5) == [42.0]
    assert reopened.generation_seconds("wan2.2-i2v-plus", "720P", 5) == []


def test_unfinished_lists_what_the_watcher_still_owes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    for task_id, status, path in [("t-pending", Status.PENDING, None), ("t-running", Status.RUNNING, None),
                                  ("t-saved", Status.SUCCEEDED, "/v.mp4"), ("t-unsaved", Status.SUCCEEDED, None),
                                  ("t-failed", Status.FAILED, None)]:  # fmt: skip
        journal.insert(task(task_id), {})
        journal.update(task(task_id, status, video_path=path))
    assert {t.task_id for t in journal.unfinished()} == {"t-pending", "t-running", "t-unsaved"}
    assert [t.task_id for t in journal.list(Status.FAILED)] == ["t-failed"]
    assert journal.note_download_failure("t-unsaved", "DownloadFailed: truncated") == 1


def test_submissions_keep_ambiguous_creates_findable(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    first = journal.record_submission("wan2.2-i2v-plus", {"prompt": "a"})
    journal.finish_submission(first, "ambiguous", error="AmbiguousCreate: ...")
    second = journal.record_submission("wan2.2-i2v-flash", {"prompt": "b"})
    journal.finish_submission(second, "created", task_id="task-0002")
    [orphan] = journal.submissions("ambiguous")
    assert orphan["model"] == "wan2.2-i2v-plus" and orphan["sent_at"].endswith("Z")


def test_an_unusable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(JournalError, match="cannot open the task journal"):
        Journal(blocker / "journal.sqlite3")
    journal = Journal(tmp_path / "j.sqlite3")
    with pytest.raises(JournalError, match="not in the journal"):
        journal.update(task("never-inserted"))
