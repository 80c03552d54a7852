"""A damaged journal fails clearly, and one task's failing follow loop leaves the others alone.

Damage as it happens on disk: bytes overwritten in the middle of the SQLite file (a bad page), an index's page
overwritten (a bad index), a file that is no database at all; and a task's record that no longer parses. Each
gives one line naming the journal and what to do, with an exit code, from ``wanx-mcp tasks`` and the server, or
``JournalError: ...`` from a tool; never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from support import WANX, isolated_env, settings_for, simulator_env

from wanx_mcp.server import build_server
from wanx_mcp.service import Wanx
from wanx_mcp.simulator import RunningSimulator
from wanx_mcp.store.sqlite import SQLiteStore
from wanx_mcp.tasks import Status, Task

pytestmark = pytest.mark.anyio
DAMAGES = ("bad page", "bad index", "garbage file")


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def damaged_journal(data_dir: Path, damage: str) -> Path:
    """A journal of 300 tasks in ``data_dir``, then damaged as ``damage`` says; returns its path."""
    path = data_dir / "journal.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    for n in range(300):
        task = Task(task_id=f"task-{n:08d}", status=Status.SUCCEEDED, model="wan2.2-i2v-flash", prompt="x" * 300,
                    created_at=f"2026-12-01T10:{n % 60:02d}:00.000Z")  # fmt: skip
        await store.insert_task(task, {"prompt": task.prompt})
    await store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, pages = db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA page_count").fetchone()[0]
    index_root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks_by_status'").fetchone()[0]
    db.close()
    if damage == "garbage file":
        path.write_bytes(os.urandom(64 * 1024))
        return path
    at = page_size * (pages // 2) + 100 if damage == "bad page" else page_size * (index_root - 1)
    with path.open("r+b") as file:
        file.seek(at)
        file.write(os.urandom(page_size - 200))
    return path


def one_clear_line(stderr: str, path: Path) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: JournalError: the task journal at {path} is damaged (")
    assert "Run `wanx-mcp doctor --rebuild-journal`: it sets the file aside" in lines[0]


@pytest.mark.parametrize("damage", DAMAGES)
async def test_tasks_command_gives_one_line_and_exit_1(tmp_path: Path, damage: str) -> None:
    path = await damaged_journal(tmp_path / "data", damage)
    done = subprocess.run([*WANX, "tasks"], env=isolated_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    one_clear_line(done.stderr, path)


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
async def test_the_server_gives_one_line_and_exit_1(tmp_path: Path, damage: str) -> None:
    path = await damaged_journal(tmp_path / "data", damage)
    done = subprocess.run([*WANX, "serve", "--simulate"], env=isolated_env(tmp_path, WANX_DATA_DIR=str(path.parent)),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    one_clear_line(done.stderr, path)


async def test_a_record_that_does_not_parse_is_a_journal_error_and_the_other_task_completes(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    async with Wanx.open(settings_for(simulator, tmp_path)) as wanx, Client(build_server(wanx)) as client:
        simulator.state.hold_pending = True  # neither finishes before A's record is damaged
        created = [await client.call_tool("create_video_task", {"image": str(image)}) for _ in range(2)]
        broken, fine = (result.structured_content["task_id"] for result in created)
        db = sqlite3.connect(wanx.store.location)
        db.execute("UPDATE tasks SET data = '{\"task_id\": 1' WHERE task_id = ?", (broken,))
        db.commit()
        db.close()
        simulator.state.hold_pending = False
        done = await client.call_tool("get_task", {"task_id": fine, "wait_seconds": 30})
        assert not done.is_error, text_of(done)
        assert done.structured_content["status"] == "SUCCEEDED" and done.structured_content["video_path"]
        for tool, args in (("get_task", {"task_id": broken}), ("list_tasks", {})):
            result = await client.call_tool(tool, args)
            assert result.is_error
            text = text_of(result)
            assert f"JournalError: the task journal at {wanx.store.location} is damaged" in text
            assert "(a record does not parse" in text
            assert "\n" not in text


async def test_an_unexpected_exception_in_one_follow_loop_is_logged_once_and_retried(
    simulator: RunningSimulator, tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wanx_mcp.watcher")
    failures = {"left": 2}
    async with Wanx.open(settings_for(simulator, tmp_path, poll_interval=0.2)) as wanx:
        simulator.state.hold_pending = True
        unlucky, lucky = [await wanx.create({"image": str(image)}) for _ in range(2)]

        async def hook(task: Task) -> None:  # a subscriber that breaks on one task's first two changes
            if task.task_id == unlucky.task_id and failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("the subscriber broke")

        wanx.watcher.on_change = hook
        simulator.state.hold_pending = False
        done = await wanx.wait(lucky.task_id, 30)
        assert done.status is Status.SUCCEEDED and done.video_path
        with anyio.fail_after(30):
            while failures["left"]:  # the unlucky loop is still alive and tried again
                await anyio.sleep(0.05)
        again = await wanx.wait(unlucky.task_id, 30)
        assert again.status is Status.SUCCEEDED and again.video_path
    unexpected = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(unexpected) == 1 and unlucky.task_id in unexpected[0].getMessage()


@pytest.mark.slow
async def test_rebuild_journal_sets_the_damaged_one_aside_and_journals_the_accounts_tasks_again(
    simulator: RunningSimulator, tmp_path: Path, image: Path
) -> None:
    async with Wanx.open(settings_for(simulator, tmp_path)) as wanx:
        done = [await wanx.generate({"image": str(image)}, 30) for _ in range(2)]
    assert all(task.status is Status.SUCCEEDED for task in done)
    path = tmp_path / "data" / "journal.sqlite3"
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    path.write_bytes(os.urandom(64 * 1024))
    for video in (tmp_path / "data" / "videos").iterdir():
        video.unlink()
    env = isolated_env(tmp_path, **simulator_env(simulator))
    rebuilt = subprocess.run([*WANX, "doctor", "--rebuild-journal", "--json"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    assert Path(report["set_aside"]).name.startswith("journal.sqlite3.broken-") and Path(report["set_aside"]).is_file()
    assert sorted(t["task_id"] for t in report["tasks"]) == sorted(t.task_id for t in done)
    assert {t["status"] for t in report["tasks"]} == {"SUCCEEDED"}
    shown = subprocess.run([*WANX, "show", done[0].task_id, "--wait", "60", "--json"], env=env, capture_output=True,
                           text=True, timeout=90)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    video = json.loads(shown.stdout)["video_path"]
    assert video and Path(video).read_bytes()[4:8] == b"ftyp"
