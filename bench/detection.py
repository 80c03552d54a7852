"""(1) Detection lag and status requests: how soon, and for how many requests, a caller learns a task ended."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from bench.common import SDK_KEY, Sim, open_wanx, schedule, sdk, simulator
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
    submitting: float = 0.0  # real seconds to submit all of MIX, one create after another


def _collect(label: str, sim: Sim, ids: list[str], returned: dict[str, float], submitting: float) -> Run:
    stats = sim.stats()["tasks"]
    gets = sim.status_gets()
    run = Run(label, submitting=submitting)
    for task_id, job in zip(ids, MIX, strict=True):
        ended = stats[task_id]["succeeded_monotonic"]
        if ended is None:
            raise RuntimeError(f"{label}: task {task_id} did not succeed")
        run.lags.append((returned[task_id] - ended) * sim.speed)
        run.requests.append(gets[task_id])
        run.durations.append(stats[task_id]["run_seconds"] * sim.speed)
        run.jobs.append(job)
    return run


async def _wanx(sim: Sim, data_dir: Path, image: Path) -> tuple[list[str], dict[str, float], float]:
    limiter = RateLimiter.with_overrides(
        running_tasks=128, submissions_per_second=128, stale_after=10.0 / sim.speed, ambiguous_hold=120.0 / sim.speed
    )
    returned: dict[str, float] = {}
    ids: list[str] = []
    with schedule(sim.speed):
        async with open_wanx(sim, data_dir, limiter=limiter) as wanx, anyio.create_task_group() as group:

            async def wait(task_id: str) -> None:
                task = await wanx.wait(task_id, 3600.0)
                returned[task_id] = time.monotonic()
                if task.status != "SUCCEEDED":
                    raise RuntimeError(f"task {task_id} ended {task.status}")

            started = time.monotonic()
            for job in MIX:
                args = {"image": str(image), "prompt": PROMPT, "model": job.model, "resolution": job.resolution,
                        "duration": job.duration}  # fmt: skip
                task = await wanx.create(args)
                ids.append(task.task_id)
                group.start_soon(wait, task.task_id)
            submitting = time.monotonic() - started
    return ids, returned, submitting


def wanx_run(label: str, speed: float, data_dir: Path, image: Path, *, seed: int = 0) -> Run:
    """MIX through wanx-mcp (library: ``Wanx.create`` then ``Wanx.wait``), in a fresh simulator."""
    with simulator(speed, seed=seed, limits=LIMITS) as sim:
        ids, returned, submitting = anyio.run(_wanx, sim, data_dir, image)
        return _collect(label, sim, ids, returned, submitting)


def _sdk_arguments(job: Job) -> dict[str, object]:
    extra = {"duration": job.duration} if get_model(job.model).sends_duration else {}
    return {"model": job.model, "prompt": PROMPT, "resolution": job.resolution, **extra}


def sdk_run(speed: float, image_uri: str, *, v2: bool) -> Run:
    """MIX through the official SDK, each task then waited for in its own thread: classic
    ``VideoSynthesis.async_call`` + ``wait``, or (``v2``) ``Client().videos.jobs.create`` + ``wait``."""
    with simulator(speed, limits=LIMITS) as sim, sdk(sim) as clients, ThreadPoolExecutor(len(MIX)) as pool:

        def wait(task_id: str) -> float:
            if v2:
                status = clients.v2.videos.jobs.wait(task_id).status
            else:
                status = clients.classic.wait(task_id, api_key=SDK_KEY).output.task_status
            if status != "SUCCEEDED":
                raise RuntimeError(f"task {task_id} ended {status}")
            return time.monotonic()

        futures: dict[str, Future[float]] = {}
        started = time.monotonic()
        for job in MIX:
            if v2:
                task_id = clients.v2.videos.jobs.create(image_url=image_uri, **_sdk_arguments(job)).task_id
            else:
                response = clients.classic.async_call(img_url=image_uri, api_key=SDK_KEY, **_sdk_arguments(job))
                if response.status_code != 200:
                    raise RuntimeError(f"SDK create failed: {response.code} {response.message}")
                task_id = response.output.task_id
            futures[task_id] = pool.submit(wait, task_id)
        submitting = time.monotonic() - started
        returned = {task_id: future.result() for task_id, future in futures.items()}
        return _collect(SDK_LABELS[v2], sim, list(futures), returned, submitting)


SDK_LABELS = {False: "dashscope 2.0.2 classic (async_call + wait)", True: "dashscope 2.0.2 v2 (jobs.create + wait)"}
#: The wanx-mcp runs: key -> (warm journal, label).
VARIANTS: dict[str, tuple[bool, str]] = {
    "cold": (False, "wanx-mcp (cold journal)"),
    "warm": (True, "wanx-mcp (warm journal)"),
}


def run_all(speed: float, work: Path, image: Path, image_uri: str, log: Callable[[str], None]) -> dict[str, Run]:
    """Both SDK clients (keys ``sdk``, ``v2``), then wanx-mcp with a cold and a warm journal.

    Warm: the journal of an earlier run of the same 64 tasks against a simulator seeded differently (what a user
    has after a few tasks of each kind), copied afresh for the warm run.
    """
    history = work / "history"
    log("  warm-up for the warm journal (seed 1)")
    wanx_run("history", speed, history, image, seed=1)
    runs: dict[str, Run] = {}
    for key, v2 in (("sdk", False), ("v2", True)):
        runs[key] = sdk_run(speed, image_uri, v2=v2)
        log(f"  {runs[key].label} done")
    for key, (warm, label) in VARIANTS.items():
        data_dir = work / key
        if warm:
            data_dir.mkdir(parents=True)
            for path in history.glob("journal.sqlite3*"):
                shutil.copy(path, data_dir / path.name)
        runs[key] = wanx_run(label, speed, data_dir, image)
        log(f"  {label} done")
    return runs


# --- a lost create answer ----------------------------------------------------------------------------------

LOST = 10


@dataclass(frozen=True)
class Lost:
    """``LOST`` creates whose first answer is cut after DashScope created the task (``accept_then_drop``)."""

    label: str
    created: int  # tasks DashScope created
    create_requests: int
    answered: int  # creates that returned a task id to the caller

    @property
    def duplicates(self) -> int:
        return self.created - LOST


def _lose_next_answer(sim: Sim) -> None:
    fault = {"target": "create", "kind": "accept_then_drop", "count": 1}
    httpx.post(f"{sim.root_url}/_simulator/faults", json=fault, timeout=10).raise_for_status()


def _lost_counts(sim: Sim, label: str, answered: int) -> Lost:
    stats = sim.stats()
    posts = sum(1 for r in stats["requests"] if r["method"] == "POST" and r["path"].startswith("/api/v1/services"))
    return Lost(label, len(stats["tasks"]), posts, answered)


async def _wanx_lost(sim: Sim, data_dir: Path, image: Path) -> Lost:
    answered = 0
    limiter = RateLimiter.with_overrides(running_tasks=128, submissions_per_second=128)
    async with open_wanx(sim, data_dir, limiter=limiter) as wanx:
        for _ in range(LOST):
            _lose_next_answer(sim)
            try:
                await wanx.create({"image": str(image), "prompt": PROMPT, "model": "wan2.2-i2v-flash"})
                answered += 1
            except Exception:  # AmbiguousCreate: never resent; the message says how to find the task
                pass
    return _lost_counts(sim, "wanx-mcp (`Wanx.create`)", answered)


def lost_answers(speed: float, work: Path, image: Path, image_uri: str) -> list[Lost]:
    """wanx-mcp and both SDK clients, each against a fresh simulator, one lost answer per create."""
    results = []
    with simulator(speed, limits=LIMITS) as sim:
        results.append(anyio.run(_wanx_lost, sim, work / "lost", image))
    arguments = _sdk_arguments(Job("wan2.2-i2v-flash", "720P", 5))
    for v2 in (False, True):
        with simulator(speed, limits=LIMITS) as sim, sdk(sim) as clients:
            answered = 0
            for _ in range(LOST):
                _lose_next_answer(sim)
                try:
                    if v2:
                        clients.v2.videos.jobs.create(image_url=image_uri, **arguments)
                        answered += 1
                    else:
                        response = clients.classic.async_call(img_url=image_uri, api_key=SDK_KEY, **arguments)
                        answered += response.status_code == 200
                except Exception:  # the SDK's own error for a cut connection
                    pass
            results.append(_lost_counts(sim, SDK_LABELS[v2], answered))
    return results


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
