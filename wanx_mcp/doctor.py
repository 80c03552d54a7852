"""``wanx-mcp doctor``: one screen of what breaks first for real users, each line ok/warn/fail with the fix."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Literal

import anyio
import httpx

from . import __version__
from .config import REGION_BASE_URLS, Settings
from .downloads import host_allowed
from .errors import WanxError
from .install import CLIENTS, config_path, configured, read_config
from .tasks import Task

Level = Literal["ok", "warn", "fail"]
LOW_SPACE = 1024**3
TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    level: Level
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _versions() -> Check:
    python = ".".join(map(str, sys.version_info[:3]))
    mcp = metadata.version("mcp")
    return Check("versions", "ok", f"Python {python}, wanx-mcp {__version__}, mcp {mcp}")


def _answers(base_url: str, key: str) -> int | str:
    """The HTTP status of one free call (the status of a random task id) with ``key``, or why it failed."""
    try:
        response = httpx.get(f"{base_url}/tasks/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"},
                             timeout=TIMEOUT)  # fmt: skip
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return response.status_code


def _key(settings: Settings, regions: Mapping[str, str]) -> list[Check]:
    """The key is there and works where it is sent; if not, where it works."""
    if settings.simulate:
        return [Check("api key", "ok", "simulating: no DASHSCOPE_API_KEY needed")]
    if not settings.api_key:
        return [Check("api key", "fail", "DASHSCOPE_API_KEY is not set",
                      "create a key in the Alibaba Cloud Model Studio console and set DASHSCOPE_API_KEY "
                      "(or try `wanx-mcp demo` / --simulate without one)")]  # fmt: skip
    present = Check("api key", "ok", f"DASHSCOPE_API_KEY is set ({len(settings.api_key)} characters)")
    where = f"{settings.region} ({settings.base_url})"
    answer = _answers(settings.base_url, settings.api_key)
    if answer == 200:
        return [present, Check("region", "ok", f"the key works in {where}")]
    if isinstance(answer, str):
        return [present, Check("region", "fail", f"{settings.base_url} cannot be reached: {answer}",
                               "check the network, proxy settings and DASHSCOPE_HTTP_BASE_URL")]  # fmt: skip
    if answer != 401:
        return [present, Check("region", "warn", f"{where} answered HTTP {answer} to a status query",
                               "try again shortly; see https://status.aliyun.com")]  # fmt: skip
    for region, base_url in regions.items():
        if base_url != settings.base_url and _answers(base_url, settings.api_key) == 200:
            overridden = settings.base_url != REGION_BASE_URLS.get(settings.region)
            fix = f"set WANX_REGION={region}" + (" and unset DASHSCOPE_HTTP_BASE_URL" if overridden else "")
            return [present, Check("region", "fail", f"the key is refused in {where} but works in {region}", fix)]
    return [present, Check("region", "fail", f"the key is refused (InvalidApiKey) in {where} and every other region",
                           "copy the key again from the Model Studio console; it may be deleted or mistyped")]


def _data_folder(settings: Settings) -> Check:
    folder = settings.data_dir
    fix = f"point WANX_DATA_DIR at a writable folder, or fix the permissions of {folder}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".doctor-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return Check("data folder", "fail", f"{folder} is not writable ({exc.strerror or exc})", fix)
    free = shutil.disk_usage(folder).free
    text = f"{folder} is writable, {free / 1024**3:.1f} GB free"
    if free < LOW_SPACE:
        return Check("data folder", "warn", text, "free some space: each video takes 5-50 MB")
    return Check("data folder", "ok", text)


def journal_health(settings: Settings) -> str:
    """Open the task store the server would use and describe it; raises WanxError when it cannot be used.
    Call it outside an event loop (it runs its own)."""
    from .store import open_store

    async def look() -> tuple[str, list[Task]]:
        store = await open_store(settings)
        try:
            return store.location, await store.list_tasks(limit=500)
        finally:
            await store.close()

    location, tasks = anyio.run(look)
    running = sum(not t.is_final for t in tasks)
    return f"{location}: {len(tasks)} recent tasks, {running} unfinished"


def _journal(settings: Settings, folder_ok: bool) -> Check:
    if not folder_ok:
        return Check("journal", "fail", "not checked: the data folder is not usable", "fix the data folder first")
    try:
        return Check("journal", "ok", journal_health(settings))
    except WanxError as exc:
        path = settings.journal_path
        return Check("journal", "fail", str(exc),
                     f"move {path} aside (e.g. to {path.name}.broken) and run again; DashScope still knows tasks "
                     "of the last 24 h (the MCP tool list_tasks with start_time finds them)")  # fmt: skip


def _allowed_dirs(settings: Settings) -> Check:
    missing = [str(d) for d in settings.allowed_dirs if not d.is_dir()]
    shown = os.pathsep.join(str(d) for d in settings.allowed_dirs)
    if missing:
        return Check("image folders", "warn", f"allowed folders missing: {', '.join(missing)}",
                     "create them or fix WANX_ALLOWED_DIRS")  # fmt: skip
    return Check("image folders", "ok", f"local images may come from {shown}")


def _downloads(settings: Settings) -> Check:
    hosts = ", ".join(settings.download_hosts)
    if not settings.download:
        return Check("downloads", "warn", "automatic downloads are off (WANX_DOWNLOAD=0)",
                     "unset WANX_DOWNLOAD, or save each video_url within 24 h yourself")  # fmt: skip
    api_host = settings.base_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if not settings.simulate and not api_host.endswith("aliyuncs.com") and not host_allowed(
        settings.base_url, settings.download_hosts
    ):
        return Check("downloads", "warn", f"videos may come from {hosts}; {api_host} (the API) is not among them",
                     f"for a simulator or proxy at {api_host} set WANX_DOWNLOAD_HOSTS={api_host}")  # fmt: skip
    return Check("downloads", "ok", f"videos are downloaded from {hosts}")


def _clients(environ: Mapping[str, str]) -> Check:
    found, broken = [], []
    for client in CLIENTS:
        path = config_path(client, environ)
        try:
            entries = configured(read_config(path), client)
        except WanxError:
            broken.append(f"{client} ({path} is not plain JSON)")
            continue
        for name, entry in entries.items():
            command = str(entry.get("command", ""))
            if os.path.isabs(command) and not os.path.exists(command):
                broken.append(f"{client} ({name}: {command} does not exist)")
            else:
                found.append(f"{client} ({name})")
    if broken:
        return Check("mcp clients", "warn", f"configured: {', '.join(found) or 'none'}; broken: {', '.join(broken)}",
                     "run `wanx-mcp install CLIENT` again")  # fmt: skip
    if not found:
        return Check("mcp clients", "warn", "no MCP client on this machine has wanx-mcp configured",
                     "run `wanx-mcp install claude-desktop` (or claude-code, cursor, vscode)")  # fmt: skip
    return Check("mcp clients", "ok", f"configured in {', '.join(found)}")


def run_checks(
    settings: Settings,
    *,
    regions: Mapping[str, str] = REGION_BASE_URLS,
    environ: Mapping[str, str] | None = None,
) -> list[Check]:
    """Every check, in the order a user fixes things; ``regions`` maps region names to base URLs."""
    environ = os.environ if environ is None else environ
    folder = _data_folder(settings)
    return [
        _versions(),
        *_key(settings, regions),
        folder,
        _journal(settings, folder.level != "fail"),
        _allowed_dirs(settings),
        _downloads(settings),
        _clients(environ),
    ]


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.level == "fail" for c in checks) else 0


def describe(check: Check) -> str:
    line = f"{check.level:<4}  {check.name:<13}  {check.message}"
    return line + (f"\n{'':<21}fix: {check.fix}" if check.fix else "")
