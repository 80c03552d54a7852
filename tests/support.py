"""Helpers shared by the tests: isolated environments, ports, server subprocesses, settings for a simulator."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from wanx_mcp.config import Settings
from wanx_mcp.simulator import RunningSimulator

WANX = [sys.executable, "-m", "wanx_mcp"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any DASHSCOPE_/WANX_ setting, its data and images in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    return env | {"WANX_DATA_DIR": str(tmp_path / "data"), "WANX_ALLOWED_DIRS": str(tmp_path),
                  "WANX_POLL_INTERVAL": "1", "WANX_LOG_LEVEL": "WARNING"} | extra  # fmt: skip


def simulator_env(sim: RunningSimulator) -> dict[str, str]:
    """What points a wanx-mcp process at a running simulator."""
    return {"DASHSCOPE_HTTP_BASE_URL": sim.base_url, "DASHSCOPE_API_KEY": sim.api_key,
            "WANX_DOWNLOAD_HOSTS": "127.0.0.1"}  # fmt: skip


def settings_for(sim: RunningSimulator, tmp_path: Path, poll_interval: float = 1.0, **changes: Any) -> Settings:
    """Settings for an in-process Wanx against ``sim``, with its data and images in ``tmp_path``."""
    base = Settings(data_dir=tmp_path / "data", allowed_dirs=(tmp_path,), poll_interval=poll_interval,
                    wait_seconds=20.0)  # fmt: skip
    return replace(base.simulated(sim.base_url, sim.speed), **changes)


@contextmanager
def listening(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` (e.g. ``[*WANX, "serve", ...]``) as a subprocess listening on ``port``, its stderr in ``log`` (a
    file, not a pipe that could fill up and stall it); terminated, then killed if need be, on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, f"exited early: {log.read_text()}"
                assert time.monotonic() < deadline, f"nothing listened on port {port} within 30 s"
                time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def text_of(result: Any) -> str:
    """The text blocks of a tool result, joined: what a client that ignores structured content shows."""
    return "\n".join(getattr(block, "text", "") for block in result.content)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at any one instant (one that ends as another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def unfinished_overlap(records: list[dict[str, Any]]) -> int:
    """The most tasks ever submitted and not yet ended upstream at once, from the simulator's task records."""
    return max_overlap([(r["created_at"], r["ended_at"]) for r in records])
