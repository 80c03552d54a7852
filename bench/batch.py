"""(2) Batch makespan: 20 wan2.2-i2v-flash tasks at once under the family's 2 submissions/s and 2 running."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.common import SDK_KEY, Sim, open_wanx, schedule, sdk, simulator
from wanx_mcp.catalog import get_model
from wanx_mcp.errors import DashScopeError

TASKS = 20
MODEL, RESOLUTION = "wan2.2-i2v-flash", "720P"
PROMPT = "waves roll onto the beach"
#: Between two submissions of the SDK user's retry loop. Like the simulator's rate window, not time-compressed.
RETRY_PAUSE = 1.0


@dataclass(frozen=True)
class Batch:
    """One client's batch; times in simulated seconds."""

    label: str
    delivered: int  # results that reached the caller
    makespan: float | None  # first submission to the last result reaching the caller
    upstream_429: int  # creates DashScope refused with 429
    surfaced_429: int  # 429s the caller saw
    status_requests: int
    watcher_requests: int | None = None  # wanx-mcp: those its watcher made (the rest: the rate limiter's refresh)


def typical() -> float:
    return get_model(MODEL).typical_seconds


def limit() -> float:
    """⌈N / running slots⌉ × T: the fastest any client can get N results out of the account."""
    return math.ceil(TASKS / get_model(MODEL).rate_limit.running_tasks) * typical()


def _count(sim: Sim, label: str, t0: float, done: list[float], surfaced: int, watcher: int | None = None) -> Batch:
    stats = sim.stats()
    throttled = sum(1 for r in stats["requests"] if r["method"] == "POST" and r["status"] == 429)
    makespan = (max(done) - t0) * sim.speed if done else None
    return Batch(label, len(done), makespan, throttled, surfaced, stats["status_gets"], watcher)


async def _wanx(sim: Sim, data_dir: Path, image: Path) -> Batch:
    done: list[float] = []
    surfaced = 0
    with schedule(sim.speed):
        async with open_wanx(sim, data_dir) as wanx:

            async def one() -> None:
                nonlocal surfaced
                try:
                    task = await wanx.create({"image": str(image), "prompt": PROMPT, "model": MODEL})
                    final = await wanx.wait(task.task_id, 3600.0)
                except DashScopeError as exc:
                    surfaced += exc.status == 429
                    return
                if final.status == "SUCCEEDED":
                    done.append(time.monotonic())

            t0 = time.monotonic()
            async with anyio.create_task_group() as group:
                for _ in range(TASKS):
                    group.start_soon(one)
            watcher = wanx.watcher.status_requests
    return _count(sim, "wanx-mcp: 20 concurrent `Wanx.create` + `wait`", t0, done, surfaced, watcher)


def wanx_batch(speed: float, data_dir: Path, image: Path) -> Batch:
    with simulator(speed, jitter=False) as sim:
        return anyio.run(_wanx, sim, data_dir, image)


def sdk_batch(speed: float, image_uri: str, *, retry: bool) -> Batch:
    """The 20 submitted in a loop, each then waited for in its own thread; ``retry``: resubmit after 429."""
    with simulator(speed, jitter=False) as sim, sdk(sim) as video, ThreadPoolExecutor(TASKS) as pool:

        def wait(task_id: str) -> float | None:
            result = video.wait(task_id, api_key=SDK_KEY)
            return time.monotonic() if result.output.task_status == "SUCCEEDED" else None

        def submit() -> Any:
            return video.async_call(
                model=MODEL, prompt=PROMPT, img_url=image_uri, api_key=SDK_KEY, resolution=RESOLUTION
            )

        futures: list[Future[float | None]] = []
        surfaced = 0
        t0 = time.monotonic()
        for _ in range(TASKS):
            response = submit()
            while retry and response.status_code == 429:
                time.sleep(RETRY_PAUSE)
                response = submit()
            if response.status_code == 429:
                surfaced += 1
            elif response.status_code == 200:
                futures.append(pool.submit(wait, response.output.task_id))
        done = [t for t in (f.result() for f in futures) if t is not None]
        label = "SDK: loop of `async_call`, retrying each 429 after 1 s" if retry else "SDK: loop of `async_call`"
        return _count(sim, label, t0, done, surfaced)


def run_all(speed: float, work: Path, image: Path, image_uri: str, log: Callable[[str], None]) -> list[Batch]:
    batches = [wanx_batch(speed, work / "batch", image)]
    log(f"  {batches[-1].label} done")
    for retry in (False, True):
        batches.append(sdk_batch(speed, image_uri, retry=retry))
        log(f"  {batches[-1].label} done")
    return batches
