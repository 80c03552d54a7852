"""Measure ``prepare_image`` on one file in a fresh process: ``python -m bench.imageproc PATH`` prints JSON.

Peak memory is counted twice: the rise of the resident set's high-water mark (VmHWM, reset first) over the
first call (what the machine sees, Pillow's C allocations included), and tracemalloc's peak of Python
allocations in a later call.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from wanx_mcp.catalog import get_model
from wanx_mcp.images import prepare_image

RUNS = 9


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmRSS: resident now; VmHWM: the most ever resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_high_water_mark() -> None:
    """VmHWM := VmRSS. Should that be refused, VmHWM may include the imports' peak: an overstatement."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    path = Path(sys.argv[1])
    limits = get_model("wan2.2-i2v-flash").image
    allowed = [path.parent]

    def prepare() -> int:
        return len(prepare_image(str(path), limits, allowed_dirs=allowed).img_url)

    _reset_high_water_mark()
    before = _status("VmRSS")
    started = time.perf_counter()
    encoded = prepare()
    first = time.perf_counter() - started
    peak_rss = _status("VmHWM") - before
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        prepare()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    prepare()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"first_ms": first * 1000, "median_ms": statistics.median(times) * 1000,
                      "peak_rss": peak_rss, "peak_traced": traced, "encoded_chars": encoded}))  # fmt: skip


if __name__ == "__main__":
    main()
