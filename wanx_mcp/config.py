"""Settings read from the environment (names in shared/CONTRACT.md)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs

from .errors import InvalidInput

REGION_BASE_URLS = {
    "beijing": "https://dashscope.aliyuncs.com/api/v1",
    "singapore": "https://dashscope-intl.aliyuncs.com/api/v1",
    "virginia": "https://dashscope-us.aliyuncs.com/api/v1",
}
SIMULATOR_KEY = "sk-simulator"


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the contract's defaults."""

    api_key: str | None = field(default=None, repr=False)
    region: str = "beijing"
    base_url: str = REGION_BASE_URLS["beijing"]
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("wanx-mcp")))
    poll_interval: float = 15.0
    wait_seconds: float = 50.0
    allowed_dirs: tuple[Path, ...] = field(default_factory=lambda: (Path.home(), Path(tempfile.gettempdir())))
    download: bool = True
    download_hosts: tuple[str, ...] = ("*.aliyuncs.com",)
    preview: bool = True
    mcp_token: str | None = field(default=None, repr=False)
    mcp_allowed_hosts: tuple[str, ...] = ()
    simulate: bool = False
    simulator_speed: float = 10.0
    #: Videos downloaded at once (each at most the per-file cap on disk while it streams).
    download_concurrency: int = 2
    #: Seconds an HTTP-transport client has to send a request's headers, and may stay silent mid-body.
    http_header_timeout: float = 10.0
    time_scale: float = 1.0
    database_url: str | None = field(default=None, repr=False)
    lease_ttl: float = 30.0
    #: ``WANX_BUDGET_CNY``: the most the submissions of any rolling 24 hours may cost (estimated); None: no limit.
    budget_cny: float | None = None

    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite3"

    def simulated(self, base_url: str, speed: float) -> Settings:
        """These settings pointed at a running simulator (fake key, its host allowed for downloads, generation
        times divided by its ``speed``); ``simulate`` is off, since nothing more needs starting."""
        host = base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        return replace(
            self, api_key=SIMULATOR_KEY, base_url=base_url, simulate=False, time_scale=speed,
            download_hosts=(*self.download_hosts, host),
        )  # fmt: skip


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def _list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(item.strip() for item in (value or "").split(",") if item.strip())
    return items or default


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(name, raw, "must be a number of seconds") from None
    if value <= 0:
        raise InvalidInput(name, raw, "must be positive")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise InvalidInput(name, raw, "must be a whole number, at least 1")
    return int(raw)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    region = (env.get("WANX_REGION") or "beijing").strip().lower()
    simulate = _flag(env.get("WANX_SIMULATE"), False)
    if region not in REGION_BASE_URLS:
        raise InvalidInput("WANX_REGION", region, "unknown region", valid=REGION_BASE_URLS)
    base_url = (env.get("DASHSCOPE_HTTP_BASE_URL") or REGION_BASE_URLS[region]).rstrip("/")
    defaults = Settings()
    allowed = env.get("WANX_ALLOWED_DIRS")
    return Settings(
        api_key=env.get("DASHSCOPE_API_KEY") or None,
        region=region,
        base_url=base_url,
        data_dir=Path(env["WANX_DATA_DIR"]).expanduser()
        if env.get("WANX_DATA_DIR")
        else defaults.data_dir / ("simulated" if simulate else ""),
        poll_interval=_number(env, "WANX_POLL_INTERVAL", defaults.poll_interval),
        wait_seconds=_number(env, "WANX_WAIT_SECONDS", defaults.wait_seconds),
        allowed_dirs=tuple(Path(p).expanduser() for p in allowed.split(os.pathsep) if p)
        if allowed
        else defaults.allowed_dirs,
        download=_flag(env.get("WANX_DOWNLOAD"), True),
        download_hosts=_list(env.get("WANX_DOWNLOAD_HOSTS"), defaults.download_hosts),
        preview=_flag(env.get("WANX_PREVIEW"), True),
        mcp_token=env.get("WANX_MCP_TOKEN") or None,
        mcp_allowed_hosts=_list(env.get("WANX_MCP_ALLOWED_HOSTS"), ()),
        simulate=simulate,
        simulator_speed=_number(env, "WANX_SIMULATOR_SPEED", defaults.simulator_speed),
        download_concurrency=_count(env, "WANX_DOWNLOAD_CONCURRENCY", defaults.download_concurrency),
        http_header_timeout=_number(env, "WANX_HTTP_HEADER_TIMEOUT", defaults.http_header_timeout),
        database_url=_database_url(env.get("WANX_DATABASE_URL")),
        lease_ttl=_number(env, "WANX_LEASE_TTL", defaults.lease_ttl),
        budget_cny=_budget(env.get("WANX_BUDGET_CNY")),
    )


def _budget(value: str | None) -> float | None:
    """``WANX_BUDGET_CNY``: unset or empty for no limit, else a non-negative amount of CNY."""
    if value is None or value.strip() == "":
        return None
    try:
        budget = float(value)
    except ValueError:
        raise InvalidInput("WANX_BUDGET_CNY", value, "must be an amount of CNY such as 50") from None
    if not budget >= 0 or budget == float("inf"):
        raise InvalidInput("WANX_BUDGET_CNY", value, "must be a finite amount of CNY, 0 or more")
    return budget


def _database_url(value: str | None) -> str | None:
    """``WANX_DATABASE_URL``: empty for the SQLite journal in the data folder, else a PostgreSQL URL."""
    url = (value or "").strip()
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise InvalidInput("WANX_DATABASE_URL", url.split("://", 1)[0] + "://...", "must start with postgresql://")
    return url or None
