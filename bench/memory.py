"""(4) Memory under load: the peak resident set of a real ``wanx-mcp serve --transport http`` process.

Three loads, each on a fresh server process running its own simulator (``WANX_SIMULATE``, 200 × faster than
DashScope, as the hardening work's tests measure it; the simulator's memory is counted; downloads off, so that
it renders no result video): 8 concurrent ``create_video_task`` calls with ``fit_image`` on a 7999x7999
transparent PNG (the largest decode and flatten the server does), 40 concurrent 27 MB HTTP request bodies, and
200 concurrent tool calls over 20 MCP sessions (40 creates with a 1 MB JPEG each, 80 ``get_task``, 80
``list_tasks``). Peak: the process's VmHWM after the load.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from bench.common import child_env

TOKEN = "bench-token-not-a-secret"
FITS, BODIES, BODY_MB, CALLS, SESSIONS = 8, 40, 27, 200, 20
CALL_TIMEOUT = 900.0
SPEED = 200
#: The hardening work's budgets for the server's peak RSS (tests/test_budgets.py, tests/test_load.py).
IMAGES_CAP_MB, CALLS_CAP_MB = 800, 500
BIG_PNG = """
import sys
from PIL import Image, ImageDraw
img = Image.new("RGBA", (7999, 7999), (0, 0, 0, 0))
ImageDraw.Draw(img).ellipse((1000, 1000, 7000, 7000), fill=(200, 40, 40, 255))
img.save(sys.argv[1], optimize=True)
"""


@dataclass(frozen=True)
class Load:
    """One load on a fresh server: its peak resident set and what the calls answered."""

    label: str
    cap_mb: int
    peak_mb: float
    seconds: float
    outcome: str


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(work: Path, name: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``wanx-mcp serve --transport http`` on a free port, simulated: its MCP URL and process."""
    port = _free_port()
    data = work / name
    data.mkdir(parents=True)
    env = child_env() | {"WANX_DATA_DIR": str(data), "WANX_ALLOWED_DIRS": str(work), "WANX_MCP_TOKEN": TOKEN,
                         "WANX_SIMULATE": "1", "WANX_SIMULATOR_SPEED": str(SPEED), "WANX_DOWNLOAD": "0",
                         "WANX_LOG_LEVEL": "WARNING"}  # fmt: skip
    command = [sys.executable, "-m", "wanx_mcp", "serve", "--transport", "http", "--port", str(port)]
    with (data / "server.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (data / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"the server did not listen: {log}") from exc
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def sessions(url: str, count: int) -> AsyncIterator[list[Client]]:
    """``count`` MCP sessions to ``url``, each on its own connection pool."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            # idle connections dropped before uvicorn's 5 s keep-alive closes them under a request (a ReadError)
            limits = httpx2.Limits(keepalive_expiry=2.0)
            http = httpx2.AsyncClient(timeout=CALL_TIMEOUT, limits=limits, headers={"Authorization": f"Bearer {TOKEN}"})
            await stack.enter_async_context(http)
            clients.append(await stack.enter_async_context(Client(streamable_http_client(url, http_client=http))))
        yield clients


async def _all(calls: list[tuple[Client, str, dict[str, Any]]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def one(index: int, client: Client, tool: str, arguments: dict[str, Any]) -> None:
        results[index] = await client.call_tool(tool, arguments)

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(one, index, *call)
    return results


def _errors(results: list[Any]) -> str:
    failed = [r for r in results if r.is_error]
    return f"{len(results) - len(failed)} of {len(results)} succeeded" + (
        f" (first error: {' '.join(getattr(b, 'text', '') for b in failed[0].content)[:200]})" if failed else ""
    )


async def _fits(url: str, png: Path) -> str:
    async with sessions(url, 1) as (client,):
        arguments = {"image": str(png), "fit_image": True, "prompt": "a red disc"}
        return _errors(await _all([(client, "create_video_task", arguments)] * FITS))


async def _bodies(url: str) -> str:
    pad = b"a" * (BODY_MB * 2**20)
    body = b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "' + pad + b'"}}'
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}  # fmt: skip
    statuses: list[int] = []

    async def post(http: httpx.AsyncClient) -> None:
        statuses.append((await http.post(url, content=body, headers=headers)).status_code)

    limits = httpx.Limits(max_connections=BODIES)
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT, limits=limits) as http, anyio.create_task_group() as group:
        for _ in range(BODIES):
            group.start_soon(post, http)
    return ", ".join(f"{statuses.count(code)} × {code}" for code in sorted(set(statuses)))


async def _mixed(url: str, jpeg: Path) -> str:
    outcome = "not every call answered"
    try:
        async with sessions(url, SESSIONS) as clients:
            seeds = await _all([(clients[0], "create_video_task", {"image": str(jpeg), "prompt": "rain"})] * 2)
            task_ids = [r.structured_content["task_id"] for r in seeds]
            calls: list[tuple[Client, str, dict[str, Any]]] = []
            for index in range(CALLS):
                client, kind = clients[index % SESSIONS], index % 10
                if kind < 2:  # 40 creates over both rate-limit families
                    model = "wan2.2-i2v-flash" if index % 20 < 10 else "wan2.5-i2v-preview"
                    arguments = {"image": str(jpeg), "model": model, "prompt": "rain"}
                    calls.append((client, "create_video_task", arguments))
                elif kind < 6:
                    calls.append((client, "get_task", {"task_id": task_ids[index % 2]}))
                else:
                    calls.append((client, "list_tasks", {"limit": 50}))
            outcome = _errors(await _all(calls))
    except Exception as exc:  # a session that fails, while calling or closing, is reported with the figures
        outcome += f"; then {_failure(exc)}"
    return outcome


def _failure(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc)[:120]}".rstrip(": ")


def _load(label: str, cap_mb: int, work: Path, name: str, run: Callable[[str], Any]) -> Load:
    with serving(work, name) as (url, process):
        started = time.monotonic()
        try:
            outcome = anyio.run(run, url)
        except Exception as exc:  # the peak so far is still the figure; the failure is reported with it
            outcome = f"aborted by {_failure(exc)}"
        return Load(label, cap_mb, peak_rss_mb(process.pid), time.monotonic() - started, outcome)


def run_all(work: Path, log: Callable[[str], None]) -> list[Load]:
    png, jpeg = work / "transparent.png", work / "noise.jpg"
    subprocess.run([sys.executable, "-c", BIG_PNG, str(png)], check=True, timeout=600)
    noise = random.Random(7).randbytes(1280 * 720 * 3)
    Image.frombytes("RGB", (1280, 720), noise).save(jpeg, quality=90)
    fits = f"{FITS} concurrent `fit_image` creates, 7999x7999 transparent PNG ({png.stat().st_size / 1e3:.0f} kB)"
    mixed = (
        f"{CALLS} concurrent tool calls, {SESSIONS} sessions (40 creates of a {jpeg.stat().st_size / 1e6:.1f} MB JPEG)"
    )
    loads = []
    for label, cap, name, run in (
        (fits, IMAGES_CAP_MB, "fits", lambda url: _fits(url, png)),
        (f"{BODIES} concurrent {BODY_MB} MB HTTP bodies", IMAGES_CAP_MB, "bodies", _bodies),
        (mixed, CALLS_CAP_MB, "mixed", lambda url: _mixed(url, jpeg)),
    ):
        loads.append(_load(label, cap, work, name, run))
        log(f"  {label}: {loads[-1].peak_mb:.0f} MB peak RSS in {loads[-1].seconds:.0f} s")
    return loads
