"""A DashScope simulator in its own process, so neither client competes with it for the interpreter.

``python -m bench.simproc '<SimulatorConfig fields as JSON>'`` prints the root URL, then serves until its
standard input closes. Every request is logged (``/_simulator/stats``), not only the latest 1000.
"""

from __future__ import annotations

import json
import sys

from wanx_mcp.simulator import FamilyLimits, SimulatorConfig, running_simulator
from wanx_mcp.simulator import state as simulator_state


def main() -> None:
    fields = json.loads(sys.argv[1])
    limits = {family: FamilyLimits(**values) for family, values in fields.pop("limits", {}).items()}
    simulator_state.LOG_SIZE = 1_000_000  # per-task request counts need the whole log
    with running_simulator(SimulatorConfig(limits=limits, **fields)) as sim:
        print(sim.root_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
