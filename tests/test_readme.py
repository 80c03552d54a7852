"""What the README and the client configuration files promise, run as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mcp import Client, StdioServerParameters
from support import free_port, isolated_env, listening

from wanx_mcp.catalog import MODELS
from wanx_mcp.cli import parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONTRACT_ENV = {"DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "WANX_REGION", "WANX_DATA_DIR",
                "WANX_POLL_INTERVAL", "WANX_WAIT_SECONDS", "WANX_ALLOWED_DIRS", "WANX_DOWNLOAD",
                "WANX_DOWNLOAD_HOSTS", "WANX_MCP_TOKEN", "WANX_SIMULATE"}  # fmt: skip


def script() -> str:
    found = shutil.which("wanx-mcp", path=str(Path(sys.executable).parent)) or shutil.which("wanx-mcp")
    assert found, "the wanx-mcp console script is not installed"
    return found


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return isolated_env(tmp_path, **{"WANX_SIMULATOR_SPEED": "100", **extra})


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`((?:[A-Z_]+=\S+ )*wanx-mcp [^`]*)`", README)
    return [line for line in lines + inline if line]


def test_every_documented_wanx_command_parses() -> None:
    commands = [c for c in readme_commands() if "wanx-mcp" in c]
    assert len(commands) >= 8
    for command in commands:
        words = shlex.split(command.split("&&")[-1].replace("CLIENT", "cursor"))
        words = words[[w.startswith("wanx-mcp") for w in words].index(True) + 1:]
        parser().parse_args(words)  # exits (fails the test) on an unknown option


def test_the_quick_start_demo_runs_from_the_console_script(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = subprocess.run([script(), "demo"], env=env_for(tmp_path, TMPDIR=str(temp)), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).is_file()
    statuses = [line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("progress:")]
    assert statuses and len(statuses) == len(set(statuses)), done.stdout  # each status once
    assert "SUCCEEDED" in done.stdout and not list(temp.iterdir()), "the demo leaves no temp folder behind"


def test_demo_real_without_a_key_says_so(tmp_path: Path) -> None:
    done = subprocess.run([script(), "demo", "--real"], env=env_for(tmp_path), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2 and "DASHSCOPE_API_KEY" in done.stderr


def test_the_simulator_command_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    command = [script(), "simulator", "--port", str(port), "--speed", "10"]
    base = f"http://127.0.0.1:{port}/api/v1"
    with listening(command, env_for(tmp_path), port, tmp_path / "simulator.log"):
        known = httpx.get(f"{base}/tasks/0000aaaa-1111", headers={"Authorization": "Bearer sk-simulator"})
        anonymous = httpx.get(f"{base}/tasks/0000aaaa-1111")
    assert known.json()["output"]["task_status"] == "UNKNOWN"
    assert anonymous.status_code == 401


def test_shared_http_deployment_as_documented(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path, WANX_MCP_TOKEN="s3cret", WANX_SIMULATE="1")
    command = [script(), "serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(port)]
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer s3cret"}
    with listening(command, env, port, tmp_path / "server.log"):
        reply = httpx.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers)
        anonymous = httpx.post(f"http://127.0.0.1:{port}/mcp", json=body, headers={"Accept": headers["Accept"]})
    assert reply.status_code == 200 and "wanx-mcp" in reply.text
    assert anonymous.status_code == 401


def client_configs() -> list[tuple[str, dict]]:
    configs = [
        ("claude_desktop_config.example.json", "mcpServers"),
        ("examples/cursor-mcp.json", "mcpServers"),
        (".vscode/mcp.json", "servers"),
    ]
    return [(f"{name}:{key}", entry) for name, group in configs
            for key, entry in json.loads((ROOT / name).read_text())[group].items()]  # fmt: skip


@pytest.mark.parametrize(("name", "entry"), client_configs(), ids=[n for n, _ in client_configs()])
def test_client_configs_name_real_commands_and_contract_variables(name: str, entry: dict) -> None:
    assert set(entry.get("env", {})) <= CONTRACT_ENV | {"WANX_SIMULATOR_SPEED"}, name
    command, args = entry["command"], entry["args"]
    program = Path(command).name
    if command == "uvx":
        assert args[0] == "wanx-mcp"
        args = args[1:]
    elif program == "python":
        assert args[:2] == ["-m", "wanx_mcp"]
        args = args[2:]
    else:
        assert program == "wanx-mcp"
    assert command in ("uvx", "wanx-mcp") or command.startswith("/"), "an absolute path, so PATH never matters"
    parser().parse_args(args or ["serve"])


@pytest.mark.anyio
async def test_the_simulator_entry_of_the_configs_starts_an_mcp_server(tmp_path: Path) -> None:
    params = StdioServerParameters(command=script(), args=["serve", "--simulate"], env=env_for(tmp_path))
    async with Client(params) as client:
        result = await client.call_tool("list_models", {})
    assert len(result.structured_content["models"]) == len(MODELS)


def test_install_then_doctor_as_documented(tmp_path: Path) -> None:
    env = env_for(tmp_path, HOME=str(tmp_path / "home"))
    env.pop("XDG_CONFIG_HOME", None)
    installed = subprocess.run([script(), "install", "claude-desktop", "--simulate"], env=env, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "home" / ".config" / "Claude" / "claude_desktop_config.json").is_file()
    checked = subprocess.run([script(), "doctor", "--simulate"], env=env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "claude-desktop (wanx-simulator)" in checked.stdout and "fail" not in checked.stdout


def test_license_and_typing_marker_ship_with_the_package() -> None:
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "wanx_mcp" / "py.typed").is_file()
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


def test_server_json_describes_the_package() -> None:
    described = json.loads((ROOT / "server.json").read_text())
    assert len(described["description"]) <= 100, "the MCP registry's limit"
    package = described["packages"][0]
    assert package["identifier"] == "wanx-mcp" and package["transport"] == {"type": "stdio"}
    assert {v["name"] for v in package["environmentVariables"]} <= CONTRACT_ENV
    assert f"mcp-name: {described['name']}" in README
