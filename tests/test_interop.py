"""Interop with MCP clients this project did not write: the MCP Inspector's CLI (``mcpdo``) and the official
TypeScript SDK client (``tests/interop/sdk_client.mjs``), over stdio and over streamable HTTP with a token.

The Node packages are pinned in ``tests/interop/package-lock.json``; ``npm ci`` runs there when
``node_modules`` is missing. Without ``node`` or ``npm`` on PATH these tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WANX, free_port, isolated_env, listening

INTEROP = Path(__file__).parent / "interop"
NODE, NPM = shutil.which("node"), shutil.which("npm")
TOOLS = {"create_video_task", "get_task", "generate_and_wait", "cancel_task", "list_tasks", "list_models"}
TOKEN = "interop-token-not-a-secret"
SERVER = [*WANX, "serve", "--simulate"]
FAST = {"WANX_POLL_INTERVAL": "1", "WANX_SIMULATOR_SPEED": "200", "WANX_LOG_LEVEL": "WARNING"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (NODE and NPM), reason="interop tests need node and npm on PATH"),
]


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return isolated_env(tmp_path, **FAST | extra)


def stop(process: subprocess.Popen[bytes], grace: float = 10) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True when it exited on SIGTERM alone."""
    process.terminate()
    try:
        process.wait(grace)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return False


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/interop/node_modules, installed from the lock file if missing (a fresh clone)."""
    modules = INTEROP / "node_modules"
    if not (modules / ".bin" / "mcpdo").exists():
        assert NPM
        done = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``wanx-mcp serve --transport http --simulate`` with WANX_MCP_TOKEN set; yields its /mcp URL and process."""
    port = free_port()
    command = [*SERVER, "--transport", "http", "--host", "127.0.0.1", "--port", str(port)]
    env = server_env(tmp_path, WANX_MCP_TOKEN=TOKEN)
    with listening(command, env, port, tmp_path / "server.log") as process:
        yield f"http://127.0.0.1:{port}/mcp", process


class Mcpdo:
    """The Inspector's ``mcpdo`` with its own private daemon, catalog and secrets (nothing under the real HOME)."""

    def __init__(self, node_modules: Path, home: Path, env: dict[str, str]) -> None:
        assert NODE
        self.argv = [NODE, str(node_modules / "@modelcontextprotocol" / "inspector" / "clients" / "mcpdo" / "build" /
                               "mcp-bin.js")]  # fmt: skip
        self.daemon_dir = tempfile.mkdtemp(prefix="mcpdo-")  # short: the daemon's unix socket path is limited
        home.mkdir(exist_ok=True)
        self.env = env | {"HOME": str(home), "MCP_INSPECTOR_DAEMON_DIR": self.daemon_dir,
                          "MCP_INSPECTOR_SECRET_STORE": "file", "NO_COLOR": "1"}  # fmt: skip

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def json(self, connection: str, *args: str) -> Any:
        done = self.run(f"@{connection}", "--format", "json", *args)
        assert done.returncode == 0, f"mcpdo {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    def connect(self, name: str, *target: str, era: str = "legacy") -> None:
        done = self.run("connect", "--connection", name, "--era", era, *target)
        assert done.returncode == 0, f"mcpdo connect failed:\n{done.stdout}\n{done.stderr}"

    def close(self) -> None:
        status = self.run("daemon", "status", timeout=30).stdout
        self.run("daemon", "stop", timeout=30)
        if match := re.search(r"Daemon pid (\d+)", status):
            pid, deadline = int(match[1]), time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{pid}/cmdline").exists() and b"mcpdod" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.daemon_dir, ignore_errors=True)


@pytest.fixture
def mcpdo(node_modules: Path, tmp_path: Path) -> Iterator[Mcpdo]:
    client = Mcpdo(node_modules, tmp_path / "home", server_env(tmp_path))
    try:
        yield client
    finally:
        client.close()


def check_inspector_session(mcpdo: Mcpdo, connection: str, image: Path) -> dict[str, Any]:
    """tools/list, resources/list, list_models and generate_and_wait through mcpdo; returns the final task."""
    assert {tool["name"] for tool in mcpdo.json(connection, "tools/list")["tools"]} >= TOOLS
    resources = {resource["uri"] for resource in mcpdo.json(connection, "resources/list")["resources"]}
    assert {"wanx://models", "wanx://tasks"} <= resources
    templates = mcpdo.json(connection, "resources/templates/list")["resourceTemplates"]
    assert {"wanx://tasks/{task_id}", "wanx://tasks/{task_id}/video"} <= {t["uriTemplate"] for t in templates}
    models = mcpdo.json(connection, "tools/call", "list_models")
    assert not models["isError"] and models["structuredContent"]["models"]
    arguments = json.dumps({"image": str(image), "prompt": "leaves fall", "resolution": "480P"})
    result = mcpdo.json(connection, "tools/call", "generate_and_wait", "--tool-args-json", arguments)
    task: dict[str, Any] = result["structuredContent"]
    assert not result["isError"] and task["status"] == "SUCCEEDED", result
    assert json.loads(result["content"][0]["text"])["status"] == "SUCCEEDED"
    assert Path(task["video_path"]).read_bytes()[4:8] == b"ftyp"
    read = mcpdo.json(connection, "resources/read", f"wanx://tasks/{task['task_id']}")
    assert json.loads(read["contents"][0]["text"])["video_path"] == task["video_path"]
    return task


@pytest.mark.parametrize("era", ["legacy", "auto"])
def test_inspector_cli_over_stdio(mcpdo: Mcpdo, image: Path, era: str) -> None:
    env = [arg for key, value in mcpdo.env.items() if key.startswith("WANX_") for arg in ("-e", f"{key}={value}")]
    mcpdo.connect("wanx", *env, "--", *SERVER, era=era)
    check_inspector_session(mcpdo, "wanx", image)
    shown = mcpdo.json("wanx", "connections/show")
    assert shown["serverInfo"]["name"] == "wanx-mcp"
    assert shown["protocolEra"] == ("legacy" if era == "legacy" else "modern")


@pytest.mark.parametrize("era", ["legacy", "auto"])
def test_inspector_cli_over_http_with_token(
    http_server: tuple[str, subprocess.Popen[bytes]], mcpdo: Mcpdo, image: Path, era: str
) -> None:
    url, _ = http_server
    refused = mcpdo.run("connect", "--connection", "anonymous", url)
    assert refused.returncode != 0, refused.stdout
    mcpdo.connect("wanx", url, "--header", f"Authorization: Bearer {TOKEN}", era=era)
    check_inspector_session(mcpdo, "wanx", image)


def test_http_server_stops_on_sigterm_with_a_modern_client_connected(
    http_server: tuple[str, subprocess.Popen[bytes]], mcpdo: Mcpdo
) -> None:
    url, process = http_server
    mcpdo.connect("wanx", url, "--header", f"Authorization: Bearer {TOKEN}", era="modern")
    assert mcpdo.json("wanx", "tools/call", "list_models")["structuredContent"]["models"]
    assert stop(process, grace=5), "the server was still running 5 s after SIGTERM"


def run_sdk_client(node_modules: Path, image: Path, env: dict[str, str], *target: str) -> dict[str, Any]:
    assert NODE and node_modules.is_dir()
    command = [NODE, str(INTEROP / "sdk_client.mjs"), "--image", str(image), *target]
    done = subprocess.run(command, cwd=INTEROP, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, f"sdk_client.mjs failed:\n{done.stdout}\n{done.stderr}"
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["status"] == "SUCCEEDED"
    assert set(summary["tools"]) >= TOOLS and "wanx://models" in summary["resources"]
    assert "wan2.2-i2v-flash" in summary["models"]
    assert summary["progress"] >= 1, summary
    assert Path(summary["video_path"]).read_bytes()[4:8] == b"ftyp"
    return summary


@pytest.mark.parametrize(("era", "protocol"), [("legacy", "2025-"), ("auto", "2026-07-28")])
def test_typescript_sdk_over_stdio(node_modules: Path, tmp_path: Path, image: Path, era: str, protocol: str) -> None:
    summary = run_sdk_client(node_modules, image, server_env(tmp_path), "--era", era, "--", *SERVER)
    assert summary["transport"] == "stdio" and summary["protocol_version"].startswith(protocol)
    assert summary["server"]["name"] == "wanx-mcp"


@pytest.mark.parametrize(("era", "protocol"), [("legacy", "2025-"), ("auto", "2026-07-28")])
def test_typescript_sdk_over_http_with_token(
    node_modules: Path, http_server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path, image: Path, era: str,
    protocol: str,
) -> None:  # fmt: skip
    url, _ = http_server
    header = f"Authorization: Bearer {TOKEN}"
    summary = run_sdk_client(node_modules, image, server_env(tmp_path), "--era", era, "--header", header, "--url", url)
    assert summary["transport"] == "http" and summary["protocol_version"].startswith(protocol)
