"""(1) Detection lag and status requests: how soon, and for how many requests, a caller learns a task ended."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from bench.common import SDK_KEY, Schedule, Sim, open_wanx, schedule, sdk, simulator
from wanx_mcp.catalog import get_model
from wanx_mcp.ratelimit import RateLimiter

PROMPT = "the subject turns to the camera and smiles"
#: Enough room that every task runs at once (rate limits are measured in (2), not here).
ROOMY = {"submissions_per_second": 128, "running_tasks": 128}
LIMITS = {"wan2.1/2.2": ROOMY, "wan2.5/2.6": ROOMY}


@dataclass(frozen=True)
class Job:
    model: str
    resolution: str
    duration: int

    @property
    def typical_seconds(self) -> float:
        spec = get_model(self.model)
        return spec.typical_seconds * self.duration / spec.default_duration

    @property
    def label(self) -> str:
        return f"{self.model} {self.resolution} {self.duration} s"


#: 64 tasks over the popular models: typical generation 48-600 simulated seconds, each varied by ±20 %.
MIX: tuple[Job, ...] = (
    *[Job("wan2.2-i2v-flash", "720P", 5)] * 24,
    *[Job("wanx2.1-i2v-turbo", "720P", seconds) for seconds in (3, 4, 5)] * 4,
    *[Job("wan2.2-i2v-plus", "1080P", 5)] * 16,
    *[Job("wan2.5-i2v-preview", "1080P", 5)] * 8,
    *[Job("wan2.5-i2v-preview", "1080P", 10)] * 4,
)


@dataclass
class Run:
    """One client's results over MIX: per task, detection lag (simulated s) and status requests."""

    label: str
    lags: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # upstream generation time, simulated s
    jobs: list[Job] = field(default_factory=list)


def _collect(label: str, sim: Sim, ids: list[str], returned: dict[str, float]) -> Run:
    stats = sim.stats()["tasks"]
    gets = sim.status_gets()
    run = Run(label)
    for task_id, job in zip(ids, MIX, strict=True):
        ended = stats[task_id]["succeeded_monotonic"]
        if ended is None:
            raise RuntimeError(f"{label}: task {task_id} did not succeed")
        run.lags.append((returned[task_id] - ended) * sim.speed)
        run.requests.append(gets[task_id])
        run.durations.append(stats[task_id]["run_seconds"] * sim.speed)
        run.jobs.append(job)
    return run


async def _wanx(sim: Sim, data_dir: Path, variant: Schedule, image: Path) -> tuple[list[str], dict[str, float]]:
    limiter = RateLimiter.with_overrides(
        running_tasks=128, submissions_per_second=128, stale_after=10.0 / sim.speed, ambiguous_hold=120.0 / sim.speed
    )
    returned: dict[str, float] = {}
    ids: list[str] = []
    with schedule(variant, sim.speed):
        async with open_wanx(sim, data_dir, limiter=limiter) as wanx, anyio.create_task_group() as group:

            async def wait(task_id: str) -> None:
                task = await wanx.wait(task_id, 3600.0)
                returned[task_id] = time.monotonic()
                if task.status != "SUCCEEDED":
                    raise RuntimeError(f"task {task_id} ended {task.status}")

            for job in MIX:
                args = {"image": str(image), "prompt": PROMPT, "model": job.model, "resolution": job.resolution,
                        "duration": job.duration}  # fmt: skip
                task = await wanx.create(args)
                ids.append(task.task_id)
                group.start_soon(wait, task.task_id)
    return ids, returned


def wanx_run(label: str, speed: float, data_dir: Path, variant: Schedule, image: Path, *, seed: int = 0) -> Run:
    """MIX through wanx-mcp (library: ``Wanx.create`` then ``Wanx.wait``), in a fresh simulator."""
    with simulator(speed, seed=seed, limits=LIMITS) as sim:
        ids, returned = anyio.run(_wanx, sim, data_dir, variant, image)
        return _collect(label, sim, ids, returned)


def sdk_run(speed: float, image_uri: str) -> Run:
    """MIX through the official SDK: ``VideoSynthesis.async_call``, then ``wait`` in a thread per task."""
    with simulator(speed, limits=LIMITS) as sim, sdk(sim) as video, ThreadPoolExecutor(len(MIX)) as pool:

        def wait(task_id: str) -> float:
            result = video.wait(task_id, api_key=SDK_KEY)
            if result.output.task_status != "SUCCEEDED":
                raise RuntimeError(f"task {task_id} ended {result.output.task_status}")
            return time.monotonic()

        futures: dict[str, Future[float]] = {}
        for job in MIX:
            extra = {"duration": job.duration} if get_model(job.model).sends_duration else {}
            response = video.async_call(
                model=job.model, prompt=PROMPT, img_url=image_uri, api_key=SDK_KEY, resolution=job.resolution, **extra
            )
            if response.status_code != 200:
                raise RuntimeError(f"SDK create failed: {response.code} {response.message}")
            futures[response.output.task_id] = pool.submit(wait, response.output.task_id)
        returned = {task_id: future.result() for task_id, future in futures.items()}
        return _collect("official SDK (async_call + wait)", sim, list(futures), returned)


#: The wanx-mcp runs: key -> (schedule, warm journal, label).
VARIANTS: dict[str, tuple[Schedule, bool, str]] = {
    "before-cold": ("before", False, "wanx-mcp, before (cold journal)"),
    "before-warm": ("before", True, "wanx-mcp, before (warm journal)"),
    "old-clock-cold": ("old-clock", False, "wanx-mcp, new schedule + old start clock (cold journal)"),
    "old-clock-warm": ("old-clock", True, "wanx-mcp, new schedule + old start clock (warm journal)"),
    "after-cold": ("after", False, "wanx-mcp, after (cold journal)"),
    "after-warm": ("after", True, "wanx-mcp, after (warm journal)"),
}


def run_all(speed: float, work: Path, image: Path, image_uri: str, log: Callable[[str], None]) -> dict[str, Run]:
    """The SDK (key ``sdk``), then wanx-mcp in each of VARIANTS.

    Warm: the journal of an earlier run of the same 64 tasks against a simulator seeded differently (what a user
    has after a few tasks of each kind), copied afresh for each warm run.
    """
    history = work / "history"
    log("  warm-up for the warm journal (seed 1)")
    wanx_run("history", speed, history, "after", image, seed=1)
    runs = {"sdk": sdk_run(speed, image_uri)}
    log(f"  {runs['sdk'].label} done")
    for key, (variant, warm, label) in VARIANTS.items():
        data_dir = work / key
        if warm:
            data_dir.mkdir(parents=True)
            for path in history.glob("journal.sqlite3*"):
                shutil.copy(path, data_dir / path.name)
        runs[key] = wanx_run(label, speed, data_dir, variant, image)
        log(f"  {label} done")
    return runs


def sdk_schedule_requests(seconds: float) -> int:
    """Status requests the SDK's documented wait schedule makes for a task ending ``seconds`` after the first."""
    elapsed, gap, requests = 0.0, 1.0, 0
    while True:
        requests += 1
        if requests % 3 == 0 and gap < 5:  # the SDK doubles its gap every third request, up to 5 s
            gap = min(gap * 2, 5.0)
        if elapsed >= seconds:
            return requests
        elapsed += gap
