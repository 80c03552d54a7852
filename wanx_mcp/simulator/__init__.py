"""A faithful stand-in for DashScope's Wan image-to-video API, for offline, free testing.

``running_simulator(config)`` serves one on loopback in a background thread; ``serve(...)`` blocks.
The API lives under ``/api/v1`` as on DashScope, result videos under ``/results``. Control it from
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
