"""Bad input: generated argument sets thrown at every tool through an MCP client (hypothesis).

Each call must end, within a time limit, in either a valid result or a clear ``isError`` result: our
``InvalidInput`` (then nothing at all reached the simulator) or the SDK's argument-validation message,
or a DashScope error code from upstream. A bare ``Error executing tool X`` is a crash and fails the test.

Examples per run (default run, no ``-m slow``): ``EXAMPLES`` below, 1750 in all, plus the fixed table of
hostile images in ``test_every_hostile_image_is_refused_before_sending``. Text never holds lone surrogates:
stdio and HTTP parse requests with pydantic's JSON parser, which rejects them before any tool runs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult
from PIL import Image

from wanx_mcp.catalog import MODELS, TEMPLATES_21, rate_limits
from wanx_mcp.config import Settings
from wanx_mcp.ratelimit import RateLimiter
from wanx_mcp.server import build_server
from wanx_mcp.service import TASK_ID, Wanx
from wanx_mcp.simulator import FamilyLimits, RunningSimulator
from wanx_mcp.tasks import Status

EXAMPLES = {
    "create_video_task": 500,
    "generate_and_wait": 250,
    "get_task": 300,
    "cancel_task": 200,
    "list_tasks": 400,
    "list_models": 100,
}
CALL_TIMEOUT = 30.0
#: A clear error is short enough to read: it names the argument and the rule, not the whole value.
MAX_ERROR_CHARS = 4000
ROOT = "@ROOT@"  # replaced by the test's allowed folder
CREATED = "@CREATED@"  # replaced by the id of a task this test created (or a well-formed unknown one)
UNKNOWN_ID = "0b7f1c2e-3d4a-4b5c-8d9e-aabbccddeeff"
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(tool: str) -> settings:
    """Hypothesis settings for ``tool``'s property: ``EXAMPLES[tool]`` examples, no deadline."""
    return settings(FUZZ, max_examples=EXAMPLES[tool])


# --- images, built by hand ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_png(width: int, height: int, color_type: int = 2) -> bytes:
    """A tiny, well-formed PNG (valid CRCs) whose header claims ``width`` x ``height``: a decompression bomb's
    shape, with one compressed row of pixels behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    row = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = BytesIO()
    img.save(out, fmt)
    return out.getvalue()


PNG = encoded(Image.new("RGB", (320, 240), "#3366aa"), "PNG")
JPEG = encoded(Image.new("RGB", (320, 240), "#aa6633"), "JPEG")
PNG64 = base64.b64encode(PNG).decode()
BOMB = claimed_png(100_000, 100_000)
BOMB_AT_LIMIT = claimed_png(8000, 8000, color_type=6)  # RGBA: must be decoded to check transparency
BOMB_WIDE = claimed_png(60_000, 1_000)  # under the pixel guard, but no resize can fit it
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400"><rect width="400" height="400"/></svg>'


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def make_files(root: Path, outside: Path) -> None:
    """The allowed folder's contents: good images, broken ones and every kind of path trick."""
    (root / "frame.png").write_bytes(PNG)
    (root / "frame.jpg").write_bytes(JPEG)
    (root / "named as.jpg.png").write_bytes(JPEG)
    (root / "sub").mkdir()
    (root / "sub" / "frame.png").write_bytes(PNG)
    Image.new("RGB", (100, 100)).save(root / "small.png")
    Image.new("RGBA", (320, 240), (0, 0, 0, 0)).save(root / "alpha.png")
    (root / "bomb.png").write_bytes(BOMB)
    (root / "bomb_at_limit.png").write_bytes(BOMB_AT_LIMIT)
    (root / "bomb_wide.png").write_bytes(BOMB_WIDE)
    (root / "truncated.png").write_bytes(PNG[: len(PNG) // 2])
    (root / "truncated.jpg").write_bytes(JPEG[:-2])
    (root / "text.png").write_bytes(b"#!/bin/sh\necho not an image\n")
    (root / "image.svg").write_bytes(SVG)
    (root / "empty.png").write_bytes(b"")
    (root / ".hidden.png").write_bytes(PNG)
    (root / ".git").mkdir()
    (root / ".git" / "frame.png").write_bytes(PNG)
    (root / "folder.png").mkdir()
    os.mkfifo(root / "fifo.png")
    (outside / "frame.png").write_bytes(PNG)
    (outside / "secret.txt").write_text("API_KEY=sk-not-for-you\n")
    links = {
        "link_in.png": root / "frame.png",
        "link_passwd.png": Path("/etc/passwd"),
        "link_environ.png": Path("/proc/self/environ"),
        "link_zero.png": Path("/dev/zero"),
        "link_outside.png": outside / "frame.png",
        "link_secret.png": outside / "secret.txt",
        "link_dir": outside,
        "link_etc": Path("/etc"),
        "link_hidden.png": root / ".hidden.png",
        "link_missing.png": root / "nothing-here.png",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    (root / "loop_a.png").symlink_to(root / "loop_b.png")
    (root / "loop_b.png").symlink_to(root / "loop_a.png")


#: Images that are fine as they are (and with fit_image).
GOOD_IMAGES = [
    f"{ROOT}/frame.png",
    f"{ROOT}/frame.jpg",
    f"{ROOT}/named as.jpg.png",
    f"{ROOT}/sub/../frame.png",
    f"{ROOT}/./sub/frame.png",
    f"{ROOT}/link_in.png",
    f"{ROOT}/frame.png/",  # a path's trailing slash is dropped, as pathlib does
    f"file://{ROOT}/frame.png",
    f"file://localhost{ROOT}/sub/frame.png",
    f"file://{ROOT}/named%20as.jpg.png",
    f"  {ROOT}/frame.png\n",
    "data:image/png;base64," + PNG64,
    "data:image/jpeg;base64," + PNG64,  # a lying MIME type: relabelled from the content
    "data:image/png;base64," + base64.b64encode(JPEG).decode(),
    "data:image/x-png;base64," + PNG64,
    "data:image/png;base64," + "\n".join(PNG64[i : i + 76] for i in range(0, len(PNG64), 76)),
    "https://example.com/frame.png",
    "https://example.com/frame?size=large#top",
    "oss://bucket/frame.png",
]
#: Images that only fit_image makes acceptable.
FIT_IMAGES = [f"{ROOT}/small.png", f"{ROOT}/alpha.png"]
#: Images that must be refused whatever the other arguments, before anything is sent.
BAD_IMAGES = [
    "",
    " ",
    "\x00",
    "/etc/passwd",
    "/etc/shadow",
    "/proc/self/environ",
    "/proc/self/mem",
    "/dev/zero",
    "/dev/stdin",
    "/dev/urandom",
    "~/.ssh/id_rsa",
    "~root/.ssh/id_rsa",
    "~no-such-user-here/x.png",
    "~",
    ".",
    "..",
    "../../../../../../etc/passwd",
    f"{ROOT}/../../../../../../etc/passwd",
    f"{ROOT}/../outside/frame.png",
    f"{ROOT}/sub/../../outside/frame.png",
    f"{ROOT}/%2e%2e/%2e%2e/etc/passwd",
    f"{ROOT}/frame.png\x00.txt",
    f"{ROOT}/nothing-here.png",
    f"{ROOT}/bomb.png",
    f"{ROOT}/bomb_at_limit.png",
    f"{ROOT}/bomb_wide.png",
    f"{ROOT}/truncated.png",
    f"{ROOT}/truncated.jpg",
    f"{ROOT}/text.png",
    f"{ROOT}/image.svg",
    f"{ROOT}/empty.png",
    f"{ROOT}/.hidden.png",
    f"{ROOT}/.git/frame.png",
    f"{ROOT}/sub/../.hidden.png",
    f"{ROOT}/folder.png",
    f"{ROOT}/fifo.png",
    f"{ROOT}/link_passwd.png",
    f"{ROOT}/link_environ.png",
    f"{ROOT}/link_zero.png",
    f"{ROOT}/link_outside.png",
    f"{ROOT}/link_secret.png",
    f"{ROOT}/link_dir/frame.png",
    f"{ROOT}/link_dir/secret.txt",
    f"{ROOT}/link_etc/passwd",
    f"{ROOT}/link_hidden.png",
    f"{ROOT}/link_missing.png",
    f"{ROOT}/loop_a.png",
    f"{ROOT}",
    "file:///etc/passwd",
    "file:///proc/self/environ",
    "file:///dev/zero",
    "file://localhost/etc/passwd",
    "file://evil.example/etc/passwd",
    f"file://evil.example{ROOT}/frame.png",
    "file://127.0.0.1/etc/passwd",
    "file://[::1]/etc/passwd",
    "file://[::1/etc/passwd",
    "file://user:pass@localhost/etc/passwd",
    f"file://{ROOT}/frame.png?x=1",
    f"file://{ROOT}/frame.png#frag",
    f"file://{ROOT}/frame.png%00.txt",
    f"file://{ROOT}/%2e%2e/%2e%2e/etc/passwd",
    "file://" + "h" * 5000 + "/x.png",
    "file:",
    "file://",
    "data:",
    "data:,",
    "data:image/png;base64,",
    "data:image/png;base64,====",
    "data:image/png;base64,!!!!",
    "data:image/png," + PNG64,
    "data:image/png;charset=utf-8," + PNG64,
    "data:text/html;base64," + PNG64,
    "data:application/octet-stream;base64," + PNG64,
    data_uri("image/png", PNG[: len(PNG) // 2]),
    data_uri("image/jpeg", JPEG[:-2]),
    data_uri("image/png", BOMB),
    data_uri("image/png", BOMB_AT_LIMIT),
    data_uri("image/png", BOMB_WIDE),
    data_uri("image/svg+xml", SVG),
    data_uri("image/png", b"GIF89a" + b"\0" * 20),
    data_uri("image/png", b"\0" * 1024),
    "data:image/png;base64," + "A" * 4_000_000,
    "http://",
    "https:///frame.png",
    "http://[::1/frame.png",
    "http://example.com:99999/frame.png",
    "https://user:password@example.com/frame.png",
    "https://example.com/frame.gif",
    "https://example.com/report.pdf",
    "https://example.com/clip.mp4?x=1",
    "https://example.com/a b.png",
    "https://example.com/\x00.png",
    "https://example.com/" + "a" * 3000 + ".png",
    "javascript:alert(1)",
    "ftp://example.com/frame.png",
    "gopher://example.com/frame.png",
    "smb://server/share/frame.png",
    "jar:file:///etc/passwd!/x.png",
    "C:\\Windows\\win.ini",
    "\\\\server\\share\\frame.png",
    "A" * 1_000_000,
]


# --- strategies -----------------------------------------------------------------------------------------

NASTY = [
    "",
    " ",
    "\x00",
    "\x00\x01\x02\x7f\x1b[31m",
    "\r\n\t\x0b\x0c",
    "\u202eevil\u202c",
    "\ufeff\u200b\u200d",
    "🎬🦊" * 50,
    "ﬃ𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "'; DROP TABLE tasks; --",
    "%s%n%x{0}{}",
    "$(id) `id` ${HOME}",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "null",
    "[simulate:DataInspectionFailed]",
]
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=300),
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), max_size=20),
    st.sampled_from(NASTY),
    st.sampled_from([800, 801, 1500, 1501, 100_000, 2_000_000]).map(lambda n: "x" * n),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
HUGE_INTS = st.sampled_from([-(2**63) - 1, -(2**31), -1, 2**31, 2**53 + 1, 2**63, 2**64, 10**30])
NUMBERS = st.one_of(st.integers(-10, 20), HUGE_INTS, st.floats(), st.floats(-1, 5))
PATHISH = st.lists(
    st.sampled_from(["..", ".", ROOT, "frame.png", ".ssh", "id_rsa", "link_dir", "link_etc", "", "~", "sub", "%2e"]),
    min_size=1,
    max_size=6,
).map("/".join)
IMAGES = st.one_of(
    st.sampled_from(GOOD_IMAGES),
    st.sampled_from(FIT_IMAGES),
    st.sampled_from(BAD_IMAGES),
    st.integers(1, len(PNG64) - 1).map(lambda n: "data:image/png;base64," + PNG64[:n]),  # truncated base64
    PATHISH,
    PATHISH.map(lambda path: "file://" + path),
    TEXT,
)
MODEL_NAMES = [m.name for m in MODELS] + [alias for m in MODELS for alias in m.aliases.values()]
STATUS_NAMES = [str(s) for s in Status]


def loose(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes any JSON value at all (wrong types included)."""
    return st.one_of(good, good, good, JSON_VALUES)


GENERATION = {
    "prompt": loose(st.none() | TEXT),
    "model": loose(st.sampled_from(MODEL_NAMES) | TEXT),
    "negative_prompt": loose(st.none() | TEXT),
    "template": loose(st.none() | st.sampled_from([*TEMPLATES_21, "melt", "FLYING"]) | TEXT),
    "resolution": loose(st.none() | st.sampled_from(["480P", "720p", "1080P", "4K", "720", "P"]) | TEXT),
    "duration": loose(st.none() | NUMBERS),
    "prompt_extend": loose(st.booleans()),
    "seed": loose(st.none() | NUMBERS),
    "watermark": loose(st.booleans() | st.sampled_from(["true", "yes", 1, 0])),
    "fit_image": loose(st.booleans()),
    "audio_url": loose(st.none() | st.sampled_from(["https://example.com/a.mp3", "file:///etc/passwd"]) | TEXT),
    "shot_type": loose(st.none() | st.sampled_from(["single", "multi"]) | TEXT),
    "audio": loose(st.none() | st.booleans()),
}
EXTRA_KEYS = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in GENERATION), JSON_VALUES, max_size=2)


def arguments(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """Argument dicts: usually the required keys and some optional ones, sometimes anything, plus strangers."""
    shaped = st.fixed_dictionaries(required, optional=optional)
    anything = st.fixed_dictionaries({}, optional=required | optional)
    return st.tuples(st.one_of(shaped, shaped, shaped, anything), st.one_of(st.just({}), EXTRA_KEYS)).map(
        lambda parts: parts[1] | parts[0]
    )


TASK_IDS: st.SearchStrategy[str] = st.one_of(
    st.just(CREATED),
    st.sampled_from([UNKNOWN_ID, "abcdefgh", "a" * 128, "a" * 129, "short", f" {UNKNOWN_ID} ", "-abcdefgh"]),
    st.sampled_from(["../../etc/passwd", "..%2f..%2fetc", f"{UNKNOWN_ID}/cancel", f"{UNKNOWN_ID}?x=1", "%00"]),
    st.from_regex(TASK_ID, fullmatch=True),
    TEXT,
)
WAIT = st.one_of(st.just(0), st.floats(0, 0.2), st.floats(), HUGE_INTS, st.sampled_from([3600, 3600.001, -0.0]))


def one_off(base: dict[str, Any], strategies: dict[str, st.SearchStrategy[Any]]) -> Any:
    """``base`` (valid arguments) with exactly one argument replaced by a generated value."""
    return st.sampled_from(sorted(strategies)).flatmap(
        lambda name: strategies[name].map(lambda value: base | {name: value})
    )


VALID_GENERATION = {"image": f"{ROOT}/frame.png", "prompt": "a fox runs through snow", "resolution": "480P"}
GENERATE_ARGS = st.one_of(
    arguments({"image": loose(IMAGES)}, GENERATION | {"wait_seconds": loose(WAIT)}),
    one_off(VALID_GENERATION | {"wait_seconds": 0}, GENERATION | {"image": IMAGES, "wait_seconds": WAIT}),
)
CREATE_ARGS = st.one_of(
    arguments({"image": loose(IMAGES)}, GENERATION),
    one_off(VALID_GENERATION, GENERATION | {"image": IMAGES}),
)
TASK_ARGS = {"task_id": loose(TASK_IDS), "wait_seconds": loose(WAIT)}
GET_ARGS = st.one_of(
    arguments({"task_id": loose(TASK_IDS)}, {"wait_seconds": loose(WAIT)}),
    one_off({"task_id": CREATED, "wait_seconds": 0}, TASK_ARGS),
)
CANCEL_ARGS = st.one_of(arguments({"task_id": loose(TASK_IDS)}, {}), one_off({"task_id": CREATED}, TASK_ARGS))
TIMES = [
    "2025-07-27T21:05:00Z", "0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00-23:59", "0001-01-02T00:00:00",
    "0999-12-31T12:00:00", "9999-12-31T23:59:59.999999-23:59", "2099-01-01", "yesterday", "1e9",
    "2025-13-45T99:99:99", "2025-07-27 21:05", "20250727T210500", "2025-W30-7",
]  # fmt: skip
LISTING = {
    "status": loose(st.none() | st.sampled_from([*STATUS_NAMES, "succeeded", "DONE"]) | TEXT),
    "limit": loose(NUMBERS | st.sampled_from([1, 20, 500, 501])),
    "start_time": loose(
        st.none()
        | st.sampled_from(TIMES)
        | st.datetimes(timezones=st.none() | st.timezones()).map(lambda moment: moment.isoformat())
        | TEXT
    ),
    "model_name": loose(st.none() | st.sampled_from(MODEL_NAMES) | TEXT),
}
LIST_ARGS = st.one_of(
    arguments({}, LISTING),
    one_off({}, LISTING),
    one_off({"start_time": "2025-07-27T21:05:00Z"}, LISTING),
)
MODELS_ARGS = arguments({}, {})


# --- the harness ----------------------------------------------------------------------------------------


@dataclass
class Harness:
    """One simulator, one Wanx and one in-memory MCP client, driven from the test thread through a portal."""

    portal: BlockingPortal
    client: Client
    wanx: Wanx
    simulator: RunningSimulator
    root: Path
    requests: list[dict[str, Any]]
    crashes: list[logging.LogRecord]
    created: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    upstream_errors: Counter[str] = field(default_factory=Counter)

    def resolve(self, value: Any) -> Any:
        """``value`` with the placeholders filled in."""
        if isinstance(value, str):
            created = self.created[-1] if self.created else UNKNOWN_ID
            return value.replace(ROOT, str(self.root)).replace(CREATED, created)
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        return value

    def call(self, tool: str, arguments: dict[str, Any]) -> tuple[str, CallToolResult]:
        """Call ``tool`` and check the result; returns its kind: ok, rejected or upstream."""
        arguments = self.resolve(arguments)
        self.crashes.clear()
        before_requests = len(self.requests)
        before_creates = self.simulator.state.stats()["creates_received"]

        async def go() -> CallToolResult:
            with anyio.fail_after(CALL_TIMEOUT):
                return await self.client.call_tool(tool, arguments)

        shown = _preview(arguments)
        try:
            result = self.portal.call(go)
        except TimeoutError:
            pytest.fail(f"{tool} hung for {CALL_TIMEOUT} s on {shown}")
        if self.crashes:
            cause = self.crashes[0].exc_info[1].__cause__ if self.crashes[0].exc_info else None
            pytest.fail(f"{tool} crashed on {shown}: {cause!r}")
        kind = self.check(tool, result, shown)
        self.outcomes[f"{tool}:{kind}"] += 1
        sent = [r for r in self.requests[before_requests:] if not self._background(r)]
        creates = self.simulator.state.stats()["creates_received"] - before_creates
        if kind == "rejected":
            assert not sent and creates == 0, f"{tool} refused {shown} but sent {sent}"
        elif tool in ("create_video_task", "generate_and_wait") and kind == "ok":
            assert creates == 1, f"{tool} sent {creates} creates for one task"
        return kind, result

    def check(self, tool: str, result: CallToolResult, shown: str) -> str:
        text = "\n".join(getattr(block, "text", "") for block in result.content)
        if not result.is_error:
            data = result.structured_content
            assert isinstance(data, dict), f"{tool} returned no structured content for {shown}"
            if tool == "list_models":
                assert {m["name"] for m in data["models"]} == {m.name for m in MODELS}
            elif tool == "list_tasks":
                assert all(task["status"] in STATUS_NAMES for task in data["tasks"])
            else:
                assert data["status"] in STATUS_NAMES and TASK_ID.fullmatch(data["task_id"]), data
                if tool in ("create_video_task", "generate_and_wait"):
                    self.created.append(data["task_id"])
                    assert "base64" not in (data.get("image") or ""), "the image data leaked into the task"
            return "ok"
        prefix = f"Error executing tool {tool}"
        assert text.strip() != prefix, f"{tool} crashed (no detail) on {shown}"
        assert len(text) <= MAX_ERROR_CHARS, f"{tool}: a {len(text)}-character error for {shown}: {text[:300]}"
        detail = text.removeprefix(prefix + ": ")
        if detail.startswith("InvalidInput: ") or re.match(r"\d+ validation errors? for ", detail):
            return "rejected"
        assert re.match(r"[A-Z][A-Za-z]+(\.[A-Za-z]+)*: \S", detail), f"{tool}: unclear error {text[:300]!r}"
        assert tool != "list_models", f"list_models failed: {text[:300]}"
        self.upstream_errors[f"{tool}: {detail[:100]}"] += 1
        return "upstream"

    def _background(self, request: dict[str, Any]) -> bool:
        """The watcher's own status checks of tasks created earlier."""
        return request["method"] == "GET" and any(request["path"].endswith(f"/tasks/{t}") for t in self.created)


def _preview(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, default=repr)
    return text if len(text) <= 400 else text[:400] + "…"


class _CrashLog(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected exception" in record.getMessage():
            self.records.append(record)


@asynccontextmanager
async def _serving(settings: Settings) -> Any:
    generous = dict.fromkeys(rate_limits(), 1000)
    limiter = RateLimiter.with_overrides(running_tasks=generous, submissions_per_second=generous)
    async with Wanx.open(settings, client_options={"limiter": limiter}) as wanx, Client(build_server(wanx)) as client:
        yield wanx, client


@pytest.fixture
def harness(tmp_path: Path, make_simulator: Callable[..., RunningSimulator]) -> Iterator[Harness]:
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    make_files(root, outside)
    unlimited = FamilyLimits(submissions_per_second=1000, running_tasks=1000)
    simulator = make_simulator(speed=2000.0, limits=dict.fromkeys(rate_limits(), unlimited))
    requests: list[dict[str, Any]] = []
    log_request = simulator.state.log_request

    def spy(method: str, path: str, status: int | str) -> None:
        requests.append({"method": method, "path": path, "status": status})
        log_request(method, path, status)

    simulator.state.log_request = spy  # type: ignore[method-assign]
    base = Settings(data_dir=tmp_path / "data", allowed_dirs=(root,), poll_interval=1.0, wait_seconds=5.0)
    settings_ = replace(base.simulated(simulator.base_url, simulator.speed), download=False)
    crashes: list[logging.LogRecord] = []
    handler = _CrashLog(crashes)
    logging.getLogger("mcp").addHandler(handler)
    try:
        with (
            start_blocking_portal("asyncio") as portal,
            portal.wrap_async_context_manager(_serving(settings_)) as (
                wanx,
                client,
            ),
        ):
            harness = Harness(portal, client, wanx, simulator, root, requests, crashes)
            yield harness
            print(dict(sorted(harness.outcomes.items())), dict(harness.upstream_errors))
    finally:
        logging.getLogger("mcp").removeHandler(handler)


# --- the properties -------------------------------------------------------------------------------------


def _must_refuse(arguments: dict[str, Any]) -> bool:
    """Whether the image alone dooms the call (a known-bad image, with any other arguments)."""
    return arguments.get("image") in BAD_IMAGES


@fuzz("create_video_task")
@given(arguments=CREATE_ARGS)
def test_create_video_task_survives_any_arguments(harness: Harness, arguments: dict[str, Any]) -> None:
    kind, result = harness.call("create_video_task", arguments)
    if _must_refuse(arguments):
        assert kind == "rejected", f"{arguments.get('image')!r} was not refused: {result.content}"


@fuzz("generate_and_wait")
@given(arguments=GENERATE_ARGS)
def test_generate_and_wait_survives_any_arguments(harness: Harness, arguments: dict[str, Any]) -> None:
    kind, result = harness.call("generate_and_wait", arguments)
    if _must_refuse(arguments):
        assert kind == "rejected", f"{arguments.get('image')!r} was not refused: {result.content}"


@fuzz("get_task")
@given(arguments=GET_ARGS, create_first=st.booleans())
def test_get_task_survives_any_arguments(harness: Harness, arguments: dict[str, Any], create_first: bool) -> None:
    if create_first or not harness.created:
        harness.call("create_video_task", {"image": f"{ROOT}/frame.png", "prompt": "a wave"})
    harness.call("get_task", arguments)


@fuzz("cancel_task")
@given(arguments=CANCEL_ARGS, create_first=st.booleans())
def test_cancel_task_survives_any_arguments(harness: Harness, arguments: dict[str, Any], create_first: bool) -> None:
    if create_first or not harness.created:
        harness.call("create_video_task", {"image": f"{ROOT}/frame.jpg"})
    harness.call("cancel_task", arguments)


@fuzz("list_tasks")
@given(arguments=LIST_ARGS)
def test_list_tasks_survives_any_arguments(harness: Harness, arguments: dict[str, Any]) -> None:
    if not harness.created:
        harness.call("create_video_task", {"image": f"{ROOT}/frame.png"})
    harness.call("list_tasks", arguments)


@fuzz("list_models")
@given(arguments=MODELS_ARGS)
def test_list_models_ignores_any_arguments(harness: Harness, arguments: dict[str, Any]) -> None:
    kind, _ = harness.call("list_models", arguments)
    assert kind in ("ok", "rejected")


# --- fixed cases: every hostile image, with and without fit --------------------------------------------


@pytest.mark.parametrize("fit", [False, True])
def test_every_hostile_image_is_refused_before_sending(harness: Harness, fit: bool) -> None:
    for image in BAD_IMAGES:
        kind, result = harness.call("create_video_task", {"image": image, "fit_image": fit})
        assert kind == "rejected", f"{image[:100]!r} (fit={fit}) was not refused: {result.content}"
        assert "InvalidInput: image=" in result.content[0].text, (image[:100], result.content)
    for image in FIT_IMAGES:
        kind, result = harness.call("create_video_task", {"image": image, "fit_image": fit})
        assert kind == ("ok" if fit else "rejected"), (image, result.content)
    for image in GOOD_IMAGES:
        kind, result = harness.call("create_video_task", {"image": image, "fit_image": fit})
        assert kind == "ok", (image[:100], result.content)
    assert harness.simulator.state.stats()["creates_received"] == len(GOOD_IMAGES) + fit * len(FIT_IMAGES)
