"""Shared fixtures: simulators of DashScope on loopback HTTP, a real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

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


def _no_postgres(reason: str) -> NoReturn:
    """Skip a test that needs PostgreSQL, or fail it when ``WANX_REQUIRE_PG=1`` (set by .ci/run)."""
    if os.environ.get("WANX_REQUIRE_PG") == "1":
        pytest.fail(f"WANX_REQUIRE_PG=1 but PostgreSQL cannot run here: {reason}")
    pytest.skip(f"PostgreSQL cannot run here: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One real PostgreSQL server for the whole session (``pgserver.PostgresServer``)."""
    try:
        from pgserver import Unavailable, running_postgres
    except ImportError as exc:  # psycopg missing: installed without the dev extra
        _no_postgres(str(exc))
    try:
        with running_postgres() as server:
            yield server
    except Unavailable as exc:
        _no_postgres(str(exc))


@pytest.fixture
def pg_url(pg_server: Any) -> Iterator[str]:
    """The URL (with a password) of a fresh, empty database on the session's PostgreSQL server."""
    with pg_server.database() as url:
        yield url
