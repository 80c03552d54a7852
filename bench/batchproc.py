"""One of several wanx-mcp processes sharing a batch and a data folder (``bench/batch.py: multi_batch``).

``python -m bench.batchproc ROOT_URL SPEED DATA_DIR IMAGE TASKS`` opens wanx-mcp on DATA_DIR, prints ``ready``,
waits for a line on standard input, runs TASKS concurrent create + wait, then prints its ``Share`` as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import anyio

from bench.batch import run_share
from bench.common import Sim


async def _go() -> None:
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


def main() -> None:
    root_url, speed, data_dir, image, tasks = sys.argv[1:]
    share = anyio.run(run_share, Sim(root_url, float(speed)), Path(data_dir), Path(image), int(tasks), _go)
    print(json.dumps(dataclasses.asdict(share)), flush=True)


if __name__ == "__main__":
    main()
