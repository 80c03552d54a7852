"""(4) Large images: validating and encoding a 10 MB JPEG and a 10 MB PNG (``wanx_mcp.images.prepare_image``)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image

from bench.common import ROOT, child_env

#: Just under the 10 MiB (10,485,760 bytes) limit of the wan2.1/2.2 models.
TARGET_BYTES = 10_000_000


@dataclass(frozen=True)
class ImageResult:
    label: str
    size: int  # bytes
    first_ms: float  # first call in the process (Pillow's plugins still loading)
    median_ms: float  # median of the next calls
    peak_rss: int  # bytes above the resident set before the first call
    peak_traced: int  # Python allocations' peak (tracemalloc)


def _noise(width: int, height: int, seed: int) -> Image.Image:
    """Random pixels: the least compressible content, so the largest image for a file size."""
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def make(folder: Path, fmt: str) -> Path:
    """A ``fmt`` file of 9.5-10 MB (4:3 frame scaled until it fits)."""
    width = 1600
    for _ in range(20):
        data = _encode(_noise(width, width * 3 // 4, seed=width), fmt)
        if 0.95 * TARGET_BYTES <= len(data) <= TARGET_BYTES:
            break
        width = int(width * (TARGET_BYTES * 0.975 / len(data)) ** 0.5)
    else:
        raise RuntimeError(f"could not make a 10 MB {fmt}")
    path = folder / f"large.{fmt.lower()}"
    path.write_bytes(data)
    return path


def measure(path: Path, label: str) -> ImageResult:
    out = subprocess.run(
        [sys.executable, "-m", "bench.imageproc", str(path)], capture_output=True, text=True, check=True, cwd=ROOT,
        env=child_env(),
    ).stdout  # fmt: skip
    figures = json.loads(out)
    return ImageResult(label, path.stat().st_size, figures["first_ms"], figures["median_ms"], figures["peak_rss"],
                       figures["peak_traced"])  # fmt: skip


def run_all(work: Path, log: Callable[[str], None]) -> list[ImageResult]:
    folder = work / "images"
    folder.mkdir()
    results = []
    for fmt in ("JPEG", "PNG"):
        path = make(folder, fmt)
        with Image.open(path) as image:
            label = f"{fmt} {image.width}x{image.height}"
        results.append(measure(path, label))
    log("  images measured")
    return results
