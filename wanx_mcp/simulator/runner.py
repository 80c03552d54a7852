"""Running the simulator: in a background thread for tests and embedding, or blocking for the CLI."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from .app import create_app
from .config import SimulatorConfig
from .responses import ConnectionDropped
from .state import SimulatorState

STARTUP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving on loopback: point ``DASHSCOPE_HTTP_BASE_URL`` at ``base_url``."""

    root_url: str
    state: SimulatorState

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"

    @property
    def speed(self) -> float:
        return self.state.config.speed

    @property
    def api_key(self) -> str:
        """A key the simulator accepts."""
        return sorted(self.state.config.api_keys)[0]


class _HideDeliberateDrops(logging.Filter):
    """Keeps uvicorn from logging the connections the simulator cuts on purpose as app errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_DROP_FILTER = _HideDeliberateDrops()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so, and with
    # Nagle on, every response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)  # connections made before uvicorn serves (e.g. right after the printed lines) wait
    return sock


def _server(state: SimulatorState, *, log_level: str, own_logging: bool) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(state),
        log_level=log_level,
        log_config=LOGGING_CONFIG if own_logging else None,
        access_log=log_level in ("info", "debug", "trace"),
        lifespan="off",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    error_logger = logging.getLogger("uvicorn.error")
    if _DROP_FILTER not in error_logger.filters:
        error_logger.addFilter(_DROP_FILTER)
    return uvicorn.Server(config)


def _url_host(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextmanager
def running_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    state: SimulatorState | None = None,
    log_level: str = "warning",
) -> Iterator[RunningSimulator]:
    """Serve a simulator on ``host`` in a background thread until the block ends.

    ``port`` 0 picks a free one. Pass the ``state`` (and ``port``) of a simulator that has stopped to bring
    it back with its tasks, as DashScope comes back after an outage; otherwise a fresh state is made from
    ``config``. Installs no logging handlers: uvicorn's records (warnings and up by default) reach stderr
    through Python's last-resort handler, or through whatever handlers the host application installed.
    """
    if state is None:
        state = SimulatorState(config)
    elif config is not None:
        raise ValueError("pass either a config or the state of a stopped simulator, not both")
    state.stopping.clear()
    sock = _bind(host, port)
    server = _server(state, log_level=log_level, own_logging=False)
    thread = threading.Thread(target=server.run, args=([sock],), name="wanx-simulator", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.002)
        yield RunningSimulator(root_url=f"http://{_url_host(sock)}", state=state)
    finally:
        state.stopping.set()
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    speed: float | None = None,
    *,
    config: SimulatorConfig | None = None,
    log_level: str = "warning",
) -> None:
    """Serve a simulator until interrupted (Ctrl+C); ``speed`` overrides the config's; port 0 picks one."""
    config = config or SimulatorConfig()
    if speed is not None:
        config = replace(config, speed=speed)
    state = SimulatorState(config)
    sock = _bind(host, port)
    server = _server(state, log_level=log_level, own_logging=True)
    keys = ", ".join(sorted({*config.api_keys, *config.accounts}))
    print(
        f"DashScope simulator on http://{_url_host(sock)}/api/v1 (speed x{config.speed:g}, keys: {keys}); "
        "admin: /_simulator/stats, /_simulator/faults, /_simulator/reset\n"
        "Use it from wanx-mcp with these environment variables:\n"
        f"DASHSCOPE_HTTP_BASE_URL=http://{_url_host(sock)}/api/v1\n"
        f"DASHSCOPE_API_KEY={min(config.api_keys or config.accounts)}\n"
        f"WANX_DOWNLOAD_HOSTS={sock.getsockname()[0]}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down gracefully
        pass
    finally:
        state.stopping.set()
        sock.close()
