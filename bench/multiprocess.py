"""(5) Three processes, one account: 3 stdio servers × 10 `generate_and_wait` of wan2.2-i2v-flash at once.

``python -m bench.multiprocess [--speed 10]`` prints one Markdown row: makespan (first call to the last result,
in simulated seconds) against the account's limit ⌈30 / 2⌉ × T, upstream 429s, status requests per task and
downloads per video. The servers are real ``wanx-mcp serve`` processes on one data folder (one SQLite journal);
the simulator runs in its own process with the family's real limits (2 submissions/s, 2 running).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from PIL import Image

from bench.common import SDK_KEY, child_env, simulator
from bench.common import Sim as Simulator
from wanx_mcp.catalog import get_model

PROCESSES, PER_PROCESS = 3, 10
MODEL = "wan2.2-i2v-flash"


def limit() -> float:
    spec = get_model(MODEL)
    return math.ceil(PROCESSES * PER_PROCESS / spec.rate_limit.running_tasks) * spec.typical_seconds


async def measure(sim: Simulator, work: Path) -> str:
    image = work / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(image)
    env = child_env() | {
        "DASHSCOPE_HTTP_BASE_URL": sim.base_url, "DASHSCOPE_API_KEY": SDK_KEY, "WANX_DOWNLOAD_HOSTS": "127.0.0.1",
        "WANX_DATA_DIR": str(work / "data"), "WANX_ALLOWED_DIRS": str(work), "WANX_LOG_LEVEL": "WARNING",
        "WANX_POLL_INTERVAL": str(15.0 / sim.speed),
    }  # fmt: skip
    done: list[float] = []
    errors = 0
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                Client(StdioServerParameters(command=sys.executable, args=["-m", "wanx_mcp", "serve"], env=env))
            )
            for _ in range(PROCESSES)
        ]

        async def one(client: Client) -> None:
            nonlocal errors
            result = await client.call_tool("generate_and_wait", {"image": str(image), "wait_seconds": 3600})
            if result.is_error or (result.structured_content or {}).get("status") != "SUCCEEDED":
                errors += 1
            else:
                done.append(time.monotonic())

        t0 = time.monotonic()
        async with anyio.create_task_group() as group:
            for n in range(PROCESSES * PER_PROCESS):
                group.start_soon(one, clients[n % PROCESSES])
    stats = sim.stats()
    requests = stats["requests"]
    throttled = sum(1 for r in requests if r["method"] == "POST" and r["status"] == 429)
    downloads = Counter(r["path"] for r in requests if r["path"].startswith("/results/") and r["status"] == 200)
    makespan = (max(done) - t0) * sim.speed if done else math.nan
    polls = sum(sim.status_gets().values()) / max(len(done), 1)
    return (
        f"| {PROCESSES} stdio servers × {PER_PROCESS} `generate_and_wait` | {len(done)}/{PROCESSES * PER_PROCESS} "
        f"| {makespan:.0f} s | {limit():.0f} s | {makespan / limit():.3f}× | {throttled} | {errors} | {polls:.1f} "
        f"| {max(downloads.values(), default=0)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=10.0, help="simulator time compression")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, simulator(args.speed, jitter=False) as sim:
        row = anyio.run(measure, sim, Path(work))
    print("| run | delivered | makespan | ⌈30/2⌉·T | vs limit | upstream 429s | errors | status requests / task "
          "| downloads per video (max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(row)


if __name__ == "__main__":
    main()
