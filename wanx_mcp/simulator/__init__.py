"""A faithful stand-in for DashScope's Wan image-to-video API, for offline, free testing.

``running_simulator(config)`` serves one on loopback in a background thread; ``serve(...)`` blocks.
The API lives under ``/api/v1`` as on DashScope (the first-frame and the first-and-last-frame create
endpoints, task status, cancel and list), result videos under ``/results``. Requests are checked against
the simulator's own table of DashScope's documented rules (rules.py), never against the client's catalog.
Keys may share an account (``SimulatorConfig.accounts``), tasks may persist in a state file shared by
several simulator processes (``state_path``), and result videos are rendered from the submitted images
(``render``, ``render_scale``, ``fps``; see videos.py). Control it from
Python through ``RunningSimulator.state`` (``state.faults.add(...)``, ``state.stats()``, ``state.reset()``,
``state.hold_pending``) or over HTTP: ``POST/GET/DELETE /_simulator/faults``, ``GET /_simulator/stats``,
``POST /_simulator/reset``, ``POST /_simulator/hold``. A prompt containing ``[simulate:CODE]`` makes
its task end FAILED with that code.
"""

from .app import create_app
from .config import FamilyLimits, SimulatorConfig
from .faults import Fault
from .runner import RunningSimulator, running_simulator, serve
from .state import SimulatorState

__all__ = [
    "FamilyLimits",
    "Fault",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "create_app",
    "running_simulator",
    "serve",
]
