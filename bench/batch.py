"""(2) Batch makespan: 20 wan2.2-i2v-flash tasks at once under the family's 2 submissions/s and 2 running."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.common import ROOT, SDK_KEY, Sim, child_env, open_wanx, schedule, sdk, simulator
from wanx_mcp.catalog import get_model
from wanx_mcp.errors import DashScopeError

TASKS = 20
#: The shared-folder batch: this many processes, each with PER_PROCESS tasks.
PROCESSES, PER_PROCESS = 3, 10
MODEL, RESOLUTION = "wan2.2-i2v-flash", "720P"
PROMPT = "waves roll onto the beach"
#: Between two submissions of the SDK user's retry loop. Like the simulator's rate window, not time-compressed.
RETRY_PAUSE = 1.0


@dataclass(frozen=True)
class Batch:
    """One client's batch; times in simulated seconds."""

    label: str
    tasks: int
    delivered: int  # results that reached the caller
    makespan: float | None  # first submission to the last result reaching the caller
    upstream_429: int  # creates DashScope refused with 429
    surfaced_429: int  # 429s the caller saw
    status_requests: int
    downloads: int  # video downloads DashScope served
    watcher_requests: int | None = None  # wanx-mcp: those its watcher made (the rest: the rate limiter's refresh)


def typical() -> float:
    return get_model(MODEL).typical_seconds


def limit(tasks: int = TASKS) -> float:
    """⌈N / running slots⌉ × T: the fastest any client can get N results out of the account."""
    return math.ceil(tasks / get_model(MODEL).rate_limit.running_tasks) * typical()


def _count(
    sim: Sim, label: str, t0: float, done: list[float], surfaced: int, watcher: int | None = None, tasks: int = TASKS
) -> Batch:
    stats = sim.stats()
    throttled = sum(1 for r in stats["requests"] if r["method"] == "POST" and r["status"] == 429)
    makespan = (max(done) - t0) * sim.speed if done else None
    return Batch(
        label, tasks, len(done), makespan, throttled, surfaced, stats["status_gets"], stats["downloads"], watcher
    )


@dataclass
class Share:
    """What one wanx-mcp process saw of its part of the batch (``time.monotonic`` is system-wide)."""

    done: list[float] = field(default_factory=list)
    surfaced_429: int = 0
    watcher_requests: int = 0


async def run_share(sim: Sim, data_dir: Path, image: Path, tasks: int, start: Callable[[], Awaitable[None]]) -> Share:
    """``tasks`` concurrent ``Wanx.create`` + ``wait`` (videos downloaded), begun once ``start`` returns."""
    share = Share()
    with schedule(sim.speed):
        async with open_wanx(sim, data_dir, download=True) as wanx:

            async def one() -> None:
                try:
                    task = await wanx.create({"image": str(image), "prompt": PROMPT, "model": MODEL})
                    final = await wanx.wait(task.task_id, 3600.0)
                except DashScopeError as exc:
                    share.surfaced_429 += exc.status == 429
                    return
                if final.status == "SUCCEEDED":
                    share.done.append(time.monotonic())

            await start()
            async with anyio.create_task_group() as group:
                for _ in range(tasks):
                    group.start_soon(one)
            share.watcher_requests = wanx.watcher.status_requests
    return share


def wanx_batch(speed: float, data_dir: Path, image: Path) -> Batch:
    with simulator(speed, jitter=False) as sim:
        t0: list[float] = []

        async def start() -> None:
            t0.append(time.monotonic())

        share = anyio.run(run_share, sim, data_dir, image, TASKS, start)
        label = f"wanx-mcp: {TASKS} concurrent `Wanx.create` + `wait`, one process"
        return _count(sim, label, t0[0], share.done, share.surfaced_429, share.watcher_requests)


def multi_batch(speed: float, data_dir: Path, image: Path) -> Batch:
    """The same batch split over PROCESSES processes (``bench/batchproc.py``) on one data folder, started together
    once every process has opened it."""
    with simulator(speed, jitter=False) as sim:
        command = [sys.executable, "-m", "bench.batchproc", sim.root_url, str(speed), str(data_dir), str(image),
                   str(PER_PROCESS)]  # fmt: skip
        children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=child_env()) for _ in range(PROCESSES)]  # fmt: skip
        try:
            for child in children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a batch process did not start")
            t0 = time.monotonic()
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            shares = [Share(**json.loads(child.communicate(timeout=1800)[0])) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        done = [t for share in shares for t in share.done]
        label = f"wanx-mcp: {PROCESSES} processes × {PER_PROCESS} tasks, one data folder"
        surfaced, watched = sum(s.surfaced_429 for s in shares), sum(s.watcher_requests for s in shares)
        return _count(sim, label, t0, done, surfaced, watched, PROCESSES * PER_PROCESS)


def sdk_batch(speed: float, image_uri: str, *, retry: bool) -> Batch:
    """The 20 submitted in a loop, each then waited for in its own thread; ``retry``: resubmit after 429."""
    with simulator(speed, jitter=False) as sim, sdk(sim) as clients, ThreadPoolExecutor(TASKS) as pool:

        def wait(task_id: str) -> float | None:
            result = clients.classic.wait(task_id, api_key=SDK_KEY)
            return time.monotonic() if result.output.task_status == "SUCCEEDED" else None

        def submit() -> Any:
            return clients.classic.async_call(
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
    batches.append(multi_batch(speed, work / "batch-shared", image))
    log(f"  {batches[-1].label} done")
    for retry in (False, True):
        batches.append(sdk_batch(speed, image_uri, retry=retry))
        log(f"  {batches[-1].label} done")
    return batches
