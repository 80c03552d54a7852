"""wanx-mcp in a real terminal (a pty): what a person sees, and Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from support import WANX, isolated_env


@contextmanager
def in_terminal(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``wanx-mcp ARGS`` with a pty as stdin, stdout and stderr; the process and the pty's master end."""
    master, slave = pty.openpty()
    process = subprocess.Popen([*WANX, *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        yield process, master
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        os.close(master)


def read_until(master: int, wanted: str, timeout: float = 30) -> str:
    """What the terminal shows until ``wanted`` appears (or the time runs out)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:  # the process ended: EIO on Linux
                break
    return seen.decode(errors="replace")


def test_bare_wanx_in_a_terminal_explains_itself_and_ctrl_c_ends_it(tmp_path: Path) -> None:
    with in_terminal([], isolated_env(tmp_path)) as (process, master):
        shown = read_until(master, "Ctrl-C")
        assert "MCP server" in shown and "wanx-mcp demo" in shown and "wanx-mcp generate" in shown
        assert "wanx-mcp --help" in shown
        time.sleep(0.5)  # the server is running (reading stdin) by now
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(2)
        assert time.monotonic() - started < 2


def test_install_prompts_for_the_key_without_echoing_it(tmp_path: Path) -> None:
    key = "sk-typed-at-the-prompt-42"
    env = isolated_env(tmp_path, HOME=str(tmp_path / "home"))
    with in_terminal(["install", "cursor"], env) as (process, master):
        assert "API key" in read_until(master, "API key")
        os.write(master, f"{key}\n".encode())
        shown = read_until(master, "doctor")
        assert process.wait(30) == 0, shown
    assert key not in shown and "Wrote" in shown
    entry = json.loads((tmp_path / "home" / ".cursor" / "mcp.json").read_text())["mcpServers"]["wanx"]
    assert entry["env"]["DASHSCOPE_API_KEY"] == key


def test_generate_in_a_terminal_shows_a_bar_with_the_time_left(tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(image)
    env = isolated_env(tmp_path, WANX_SIMULATOR_SPEED="20", COLUMNS="120")
    with in_terminal(["generate", str(image), "waves", "--simulate"], env) as (process, master):
        shown = read_until(master, ".mp4", timeout=60)
        assert process.wait(30) == 0, shown
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    # the bar, the time left (from the server's estimate), the time elapsed
    assert re.search(r"RUNNING: \S+ ━+ \d:\d\d:\d\d \d:\d\d:\d\d", plain), plain
