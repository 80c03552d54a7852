"""(3) Server overhead over stdio: ``get_task`` on a journaled task and cold start, against a bare MCPServer.

Two clients: a raw JSON-RPC client (a line out, a line back: what the *server* costs), and the MCP SDK's
``Client``, which also validates every result against the tool's output schema (what a typical caller sees).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from bench.common import SDK_KEY, child_env, open_wanx, percentile, schedule, simulator

STARTS = 7
WARMUP_CALLS = 100
CALLS = 2000
SDK_CALLS = 1000
BLOCK = 50


@dataclass(frozen=True)
class Spec:
    label: str
    args: list[str]
    env: dict[str, str]
    tool: str
    arguments: dict[str, Any]
    cold_start: bool = True  # measured for cold start too (the same server with other arguments need not be)


@dataclass
class Server:
    """One server's figures, in milliseconds."""

    label: str
    starts: list[float] = field(default_factory=list)  # spawn to the initialize response
    calls: list[float] = field(default_factory=list)  # tools/call, raw JSON-RPC
    sdk_calls: list[float] = field(default_factory=list)  # tools/call through mcp.Client

    @property
    def start(self) -> float:
        return statistics.median(self.starts) if self.starts else math.nan


def p50(values: list[float]) -> float:
    return percentile(values, 0.5)


def p99(values: list[float]) -> float:
    return percentile(values, 0.99)


class RawClient:
    """Newline-delimited JSON-RPC over a spawned server's stdin/stdout, nothing else."""

    def __init__(self, spec: Spec) -> None:
        self.spawned = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, *spec.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=spec.env, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        self._next_id = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        self._send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        assert self._process.stdout is not None
        while True:
            message = json.loads(self._process.stdout.readline() or b"null")
            if message is None:
                raise RuntimeError(f"the server exited during {method}")
            if message.get("id") == self._next_id:
                if "error" in message or message["result"].get("isError"):
                    raise RuntimeError(f"{method} failed: {message}")
                return message["result"]

    def initialize(self) -> float:
        """The handshake; milliseconds from spawning to the initialize response."""
        self.request("initialize", {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
                                    "clientInfo": {"name": "bench", "version": "0"}})  # fmt: skip
        elapsed = (time.perf_counter() - self.spawned) * 1000
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return elapsed

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        self._process.stdin.flush()


def _raw(specs: list[Spec], servers: list[Server]) -> None:
    for _ in range(STARTS):  # alternating, so that both see the same machine
        for spec, server in zip(specs, servers, strict=True):
            if not spec.cold_start:
                continue
            client = RawClient(spec)
            server.starts.append(client.initialize())
            client.close()
    clients = [RawClient(spec) for spec in specs]
    try:
        for client in clients:
            client.initialize()
        for block in range((WARMUP_CALLS + CALLS) // BLOCK):  # both open, calls in alternating blocks
            for spec, server, client in zip(specs, servers, clients, strict=True):
                for _ in range(BLOCK):
                    begun = time.perf_counter()
                    client.request("tools/call", {"name": spec.tool, "arguments": spec.arguments})
                    if block * BLOCK >= WARMUP_CALLS:
                        server.calls.append((time.perf_counter() - begun) * 1000)
    finally:
        for client in clients:
            client.close()


async def _sdk(specs: list[Spec], servers: list[Server]) -> None:
    async with AsyncExitStack() as stack:
        clients = []
        for spec in specs:
            params = StdioServerParameters(command=sys.executable, args=spec.args, env=spec.env)
            clients.append(await stack.enter_async_context(Client(params, mode="legacy")))
        for block in range((WARMUP_CALLS + SDK_CALLS) // BLOCK):
            for spec, server, client in zip(specs, servers, clients, strict=True):
                for _ in range(BLOCK):
                    begun = time.perf_counter()
                    result = await client.call_tool(spec.tool, spec.arguments)
                    if block * BLOCK >= WARMUP_CALLS:
                        server.sdk_calls.append((time.perf_counter() - begun) * 1000)
                    if result.is_error:
                        raise RuntimeError(f"{spec.label}: {result}")


async def _journaled_task(data_dir: Path, image: Path) -> str:
    """A finished, downloaded task in ``data_dir``'s journal (made against a fast simulator)."""
    with simulator(200.0, jitter=False) as sim, schedule(sim.speed):
        async with open_wanx(sim, data_dir, download=True) as wanx:
            task = await wanx.create({"image": str(image), "prompt": "a journaled task"})
            final = await wanx.wait(task.task_id, 60.0)
    if final.status != "SUCCEEDED" or not final.video_path:
        raise RuntimeError(f"could not prepare a journaled task: {final}")
    return task.task_id


def run_all(work: Path, image: Path, log: Callable[[str], None]) -> list[Server]:
    data_dir = work / "overhead"
    task_id = anyio.run(_journaled_task, data_dir, image)
    env = child_env() | {"WANX_LOG_LEVEL": "WARNING"}
    # final and downloaded, the task is answered from the journal: DashScope (here: nobody) is never asked
    wanx_env = env | {"WANX_DATA_DIR": str(data_dir), "WANX_ALLOWED_DIRS": str(work), "DASHSCOPE_API_KEY": SDK_KEY,
                      "DASHSCOPE_HTTP_BASE_URL": "http://127.0.0.1:9/api/v1"}  # fmt: skip
    wanx = ["-m", "wanx_mcp"]
    specs = [
        Spec("bare MCPServer, `echo`", ["-m", "bench.bare_server"], env, "echo", {"text": task_id}),
        Spec("wanx-mcp, `get_task` (journaled, `preview=false`)", wanx, wanx_env, "get_task",
             {"task_id": task_id, "preview": False}),
        Spec("wanx-mcp, `get_task` with its preview image", wanx, wanx_env, "get_task", {"task_id": task_id},
             cold_start=False),
    ]  # fmt: skip
    servers = [Server(spec.label) for spec in specs]
    _raw(specs, servers)
    anyio.run(_sdk, specs, servers)
    log("  stdio servers measured")
    return servers
