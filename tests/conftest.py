"""Shared fixtures: simulators of DashScope on loopback HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from wanx_mcp.simulator import RunningSimulator, SimulatorConfig, running_simulator

FAST: dict[str, Any] = {"speed": 200.0, "jitter": False, "render": False}  # render=True where a test looks at the video


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A plain 640x480 PNG first frame in ``tmp_path`` (the allowed folder in the tests' settings)."""
    path = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), "#3366aa").save(path)
    return path


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., RunningSimulator]]:
    """Start simulators for this test: ``make_simulator(**config_fields)`` (fast, no jitter unless told)."""
    with ExitStack() as stack:

        def make(**options: Any) -> RunningSimulator:
            return stack.enter_context(running_simulator(SimulatorConfig(**{**FAST, **options})))

        yield make


@pytest.fixture
def simulator(make_simulator: Callable[..., RunningSimulator]) -> RunningSimulator:
    """A fresh simulator at speed 200 without jitter: a 60 s generation takes 0.3 s."""
    return make_simulator()
