"""``wanx-mcp install CLIENT``: each client's file at its place and in its format, a real server from it,
idempotence, backups, and the key never shown."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from support import isolated_env

from wanx_mcp.cli import main
from wanx_mcp.install import config_path

KEY = "sk-install-test-0123456789abcdef"
#: Where each client's file lands under a temp HOME on Linux (XDG_CONFIG_HOME unset), and the servers' key.
PLACES = {
    "claude-desktop": (".config/Claude/claude_desktop_config.json", "mcpServers"),
    "claude-code": (".claude.json", "mcpServers"),
    "cursor": (".cursor/mcp.json", "mcpServers"),
    "vscode": (".config/Code/User/mcp.json", "servers"),
}
OTHER = {"command": "npx", "args": ["-y", "some-other-server"]}


def home_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = isolated_env(tmp_path, HOME=str(tmp_path / "home"), **extra)
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("APPDATA", None)
    return env


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


Install = Callable[..., Done]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Install:
    """``wanx-mcp install ARGS`` as a user runs it, in this process (stdin is no terminal) with a temp HOME."""

    def run(*args: str, **extra: str) -> Done:
        monkeypatch.setattr(os, "environ", home_env(tmp_path, **extra))
        capsys.readouterr()
        code = main(["install", *args])
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.*.bak"))


async def initialize(entry: dict[str, Any], tmp_path: Path) -> str:
    """Start the recorded command with the recorded env on top of a full environment; the server's name."""
    env = home_env(tmp_path) | entry.get("env", {})
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env)
    async with Client(params) as client:
        assert client.server_info is not None
        return client.server_info.name


@pytest.mark.anyio
@pytest.mark.parametrize("client", list(PLACES))
async def test_install_writes_a_working_entry_once_and_keeps_a_backup(
    tmp_path: Path, install: Install, client: str
) -> None:
    place, group = PLACES[client]
    path = tmp_path / "home" / place
    path.parent.mkdir(parents=True)
    before = {"someSetting": True, group: {"other": OTHER}}
    path.write_text(json.dumps(before))
    data = str(tmp_path / "server-data")

    first = install(client, "--env", f"WANX_DATA_DIR={data}", "--env", "WANX_REGION=singapore",
                    DASHSCOPE_API_KEY=KEY)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert KEY not in first.stdout + first.stderr
    written = json.loads(path.read_text())
    entry = written[group]["wanx"]
    assert written["someSetting"] is True and written[group]["other"] == OTHER
    assert Path(entry["command"]).is_absolute() and entry["args"] == ["-m", "wanx_mcp"]
    assert entry["env"] == {"DASHSCOPE_API_KEY": KEY, "WANX_DATA_DIR": data, "WANX_REGION": "singapore"}
    if client in ("vscode", "claude-code"):
        assert entry["type"] == "stdio"
    else:
        assert "type" not in entry
    [backup] = backups(path)
    assert json.loads(backup.read_text()) == before
    assert await initialize(entry, tmp_path) == "wanx-mcp"

    content = path.read_bytes()
    second = install(client, "--env", f"WANX_DATA_DIR={data}", "--env", "WANX_REGION=singapore",
                     DASHSCOPE_API_KEY=KEY)  # fmt: skip
    assert second.returncode == 0 and "nothing changed" in second.stdout
    assert path.read_bytes() == content and backups(path) == [backup]


@pytest.mark.anyio
async def test_simulate_needs_no_key_and_starts_the_simulator(tmp_path: Path, install: Install) -> None:
    path = tmp_path / "home" / PLACES["cursor"][0]
    done = install("cursor", "--simulate", "--env", f"WANX_DATA_DIR={tmp_path / 'd'}")
    assert done.returncode == 0, done.stderr
    assert not backups(path)  # there was nothing to back up
    entry = json.loads(path.read_text())["mcpServers"]["wanx-simulator"]
    assert entry["args"] == ["-m", "wanx_mcp", "serve", "--simulate"] and "DASHSCOPE_API_KEY" not in entry["env"]
    env = home_env(tmp_path) | entry["env"]
    async with Client(StdioServerParameters(command=entry["command"], args=entry["args"], env=env)) as client:
        models = await client.call_tool("list_models", {})
    assert models.structured_content and models.structured_content["models"]
    assert (path.stat().st_mode & 0o077) == 0  # a new file holding an entry is private


def test_print_shows_without_writing_or_showing_the_key(tmp_path: Path, install: Install) -> None:
    done = install("claude-code", "--print", DASHSCOPE_API_KEY=KEY)
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    assert "claude mcp add --scope user wanx" in done.stdout and '"mcpServers"' in done.stdout
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.json"))


def test_vscode_workspace_file_with_config(tmp_path: Path, install: Install) -> None:
    workspace = tmp_path / "project" / ".vscode" / "mcp.json"
    done = install("vscode", "--config", str(workspace), DASHSCOPE_API_KEY=KEY)
    assert done.returncode == 0, done.stderr
    entry = json.loads(workspace.read_text())["servers"]["wanx"]
    assert entry["type"] == "stdio" and entry["env"]["DASHSCOPE_API_KEY"] == KEY


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (["--env", KEY], None, "InvalidInput: --env='32 characters': must be KEY=VALUE"),
        ([], '{"servers": {} // a comment\n}', "is not plain JSON"),
        ([], '["a list"]', "does not hold a JSON object"),
        (["--print"], None, None),
    ],
    ids=["bad-env", "comments", "not-an-object", "print-is-fine"],
)
def test_bad_input_exits_2_and_leaves_the_file(
    tmp_path: Path, install: Install, args: list[str], content: str | None, message: str | None
) -> None:
    path = tmp_path / "mcp.json"
    if content is not None:
        path.write_text(content)
    done = install("vscode", "--config", str(path), *args, DASHSCOPE_API_KEY=KEY)
    if message is None:
        assert done.returncode == 0
    else:
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert KEY not in done.stdout + done.stderr
    assert (path.read_text() if path.exists() else None) == content
    assert not backups(path)


def test_no_key_without_a_terminal_exits_2(tmp_path: Path, install: Install) -> None:
    done = install("cursor")
    assert done.returncode == 2 and "DASHSCOPE_API_KEY" in done.stderr and "--simulate" in done.stderr
    assert not (tmp_path / "home" / PLACES["cursor"][0]).exists()


@pytest.mark.parametrize(
    ("client", "platform", "env", "expected"),
    [
        ("claude-desktop", "darwin", {"HOME": "/h"},
         "/h/Library/Application Support/Claude/claude_desktop_config.json"),
        ("claude-desktop", "win32", {"USERPROFILE": "/u", "APPDATA": "/a"}, "/a/Claude/claude_desktop_config.json"),
        ("claude-desktop", "linux", {"HOME": "/h", "XDG_CONFIG_HOME": "/x"}, "/x/Claude/claude_desktop_config.json"),
        ("claude-code", "win32", {"USERPROFILE": "/u", "APPDATA": "/a"}, "/u/.claude.json"),
        ("cursor", "darwin", {"HOME": "/h"}, "/h/.cursor/mcp.json"),
        ("vscode", "darwin", {"HOME": "/h"}, "/h/Library/Application Support/Code/User/mcp.json"),
        ("vscode", "win32", {"USERPROFILE": "/u", "APPDATA": "/a"}, "/a/Code/User/mcp.json"),
        ("vscode", "linux", {"HOME": "/h"}, "/h/.config/Code/User/mcp.json"),
    ],
)
def test_standard_locations_per_os(client: str, platform: str, env: dict[str, str], expected: str) -> None:
    assert config_path(client, env, platform) == Path(expected)
