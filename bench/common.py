"""What every benchmark shares: a simulator process, wanx-mcp and the SDK on its time scale, small statistics."""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from PIL import Image

import wanx_mcp.schedule
import wanx_mcp.watcher
from wanx_mcp.config import SIMULATOR_KEY, Settings
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.service import Wanx

ROOT = Path(__file__).resolve().parent.parent
#: The key the simulator accepts, for the SDK (wanx-mcp gets it from ``Settings.simulated``).
SDK_KEY = SIMULATOR_KEY


@dataclass(frozen=True)
class Sim:
    """A simulator serving in a child process."""

    root_url: str
    speed: float

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.root_url}/_simulator/stats", timeout=60).json()

    def status_gets(self) -> Counter[str]:
        """Status requests per task id, from the simulator's request log."""
        stats = self.stats()
        prefix = "/api/v1/tasks/"
        return Counter(
            r["path"][len(prefix) :]
            for r in stats["requests"]
            if r["method"] == "GET" and r["path"].startswith(prefix) and len(r["path"]) > len(prefix)
        )


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout importable, no stray wanx or DashScope settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANX_", "DASHSCOPE_"))}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


@contextmanager
def simulator(
    speed: float, *, jitter: bool = True, seed: int = 0, limits: dict[str, Any] | None = None
) -> Iterator[Sim]:
    """A fresh simulator process (``limits``: family -> FamilyLimits fields) serving its fixed sample video (no
    rendering from the submitted image: the clients are measured, not the simulator)."""
    config = {"speed": speed, "jitter": jitter, "seed": seed, "limits": limits or {}, "render": False}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.simproc", json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=child_env(),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        root = process.stdout.readline().strip()
        if not root.startswith("http"):
            raise RuntimeError("the simulator did not start")
        yield Sim(root, speed)
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- wanx-mcp on the simulator's time scale ---------------------------------------------------------------


class _ScaledEstimate:
    """Stands in for ``Estimate`` inside the watcher, passing the simulator's speed as the time scale."""

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def from_history(self, samples: list[float], fallback: float) -> Any:
        return wanx_mcp.schedule.Estimate.from_history(samples, fallback, time_scale=self._scale)


@contextmanager
def schedule(scale: float) -> Iterator[None]:
    """Run the watcher's polling (wanx_mcp/schedule.py) with its fixed floors and costs divided by the
    simulator's speed (``scale``)."""
    patches = {
        "next_poll_delay": functools.partial(wanx_mcp.schedule.next_poll_delay, time_scale=scale),
        "Estimate": _ScaledEstimate(scale),
    }
    saved = {name: getattr(wanx_mcp.watcher, name) for name in patches}
    for name, value in patches.items():
        setattr(wanx_mcp.watcher, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(wanx_mcp.watcher, name, value)


def settings(sim: Sim, data_dir: Path, *, download: bool = False) -> Settings:
    """Default settings with their durations divided by the simulator's speed (WANX_POLL_INTERVAL=15/speed);
    images are read from ``data_dir``'s parent."""
    base = Settings(
        data_dir=data_dir, allowed_dirs=(data_dir.parent,), poll_interval=15.0 / sim.speed, download=download
    )
    return base.simulated(sim.base_url, sim.speed)


@asynccontextmanager
async def open_wanx(sim: Sim, data_dir: Path, *, limiter: RateLimiter | None = None,
                    download: bool = False) -> AsyncIterator[Wanx]:  # fmt: skip
    """``Wanx.open`` with the client's backoff scaled like the settings. Without ``limiter``, the rate limits live
    in the task store, shared with every process on ``data_dir`` (their refresh and hold times unscaled)."""
    speed = sim.speed
    config = settings(sim, data_dir, download=download)
    options: dict[str, Any] = {"backoff": 0.5 / speed, "max_backoff": 30.0 / speed}
    if limiter is not None:
        options["limiter"] = limiter
    async with Wanx.open(config, client_options=options) as wanx:
        yield wanx


# --- the official SDK on the simulator's time scale -----------------------------------------------------


@dataclass(frozen=True)
class Sdk:
    """The official SDK's two video clients, pointed at a simulator."""

    classic: Any  # dashscope.VideoSynthesis: async_call + wait
    v2: Any  # a dashscope.Client: videos.jobs.create / wait


@contextmanager
def sdk(sim: Sim) -> Iterator[Sdk]:
    """The ``dashscope`` SDK pointed at ``sim``, every pause of its wait loops and retries divided by the speed.

    Classic ``VideoSynthesis.wait`` (dashscope/client/base_api.py) polls, then sleeps 1, 1, 2, 2, 2, 4, 4, 4, 5,
    5... seconds through that module's ``time``; the v2 ``jobs.wait`` (dashscope/v2/resources/_jobs.py) sleeps
    1, 2, 4, 8, 8... seconds through its module's ``time``, and its transport (dashscope/v2/transport/http.py)
    backs off 0.5 s doubling up to 8 s through ``_sleep`` before retrying 408/409/429/5xx or a transport error.
    Only those modules' views of ``time`` (and ``_sleep``) are replaced.
    """
    import dashscope
    from dashscope.client import base_api
    from dashscope.v2.resources import _jobs
    from dashscope.v2.transport import http

    speed = sim.speed

    def sleep(seconds: float) -> None:
        time.sleep(seconds / speed)

    saved = dashscope.base_http_api_url, base_api.time, _jobs.time, http._sleep
    os.environ["DASHSCOPE_HTTP_BASE_URL"] = dashscope.base_http_api_url = sim.base_url
    base_api.time = SimpleNamespace(time=time.time, sleep=sleep)  # type: ignore[assignment]
    _jobs.time = SimpleNamespace(monotonic=time.monotonic, sleep=sleep)  # type: ignore[assignment]
    http._sleep = sleep
    client = dashscope.Client(api_key=SDK_KEY, base_url=sim.base_url)
    try:
        yield Sdk(dashscope.VideoSynthesis, client)
    finally:
        client.close()
        dashscope.base_http_api_url, base_api.time, _jobs.time, http._sleep = saved
        os.environ.pop("DASHSCOPE_HTTP_BASE_URL", None)


# --- inputs and statistics ------------------------------------------------------------------------------


def frame(folder: Path) -> tuple[Path, str]:
    """A 640x480 PNG first frame: its path, and the same bytes as a data URI."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "#3366aa").save(buffer, "PNG")
    path = folder / "frame.png"
    path.write_bytes(buffer.getvalue())
    return path, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan
