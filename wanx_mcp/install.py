"""``wanx-mcp install CLIENT``: write (or merge) wanx-mcp into an MCP client's configuration file."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InvalidInput

CLIENTS = ("claude-desktop", "claude-code", "cursor", "vscode")
KEY = "DASHSCOPE_API_KEY"
#: Settings that belong with the key (keys are per region), copied from the environment when set.
KEY_COMPANIONS = ("WANX_REGION", "DASHSCOPE_HTTP_BASE_URL")
HIDDEN = "<your DASHSCOPE_API_KEY>"


@dataclass(frozen=True)
class Entry:
    """One MCP server as a client launches it."""

    name: str
    command: str
    args: list[str]
    env: dict[str, str]

    def as_json(self, client: str, hide_key: bool = False) -> dict[str, Any]:
        env = {k: HIDDEN if hide_key and k == KEY else v for k, v in self.env.items()}
        typed = {"type": "stdio"} if client in ("vscode", "claude-code") else {}
        return {**typed, "command": self.command, "args": self.args, **({"env": env} if env else {})}


def group_of(client: str) -> str:
    """The key under which the client's file lists MCP servers."""
    return "servers" if client == "vscode" else "mcpServers"


def config_path(client: str, env: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """Where ``client`` keeps its user-level MCP configuration on this OS."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    home = Path(env.get("USERPROFILE" if platform == "win32" else "HOME") or Path.home())
    if platform == "darwin":
        app_config = home / "Library" / "Application Support"
    elif platform == "win32":
        app_config = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
    else:
        app_config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    paths = {
        "claude-desktop": app_config / "Claude" / "claude_desktop_config.json",
        "claude-code": home / ".claude.json",
        "cursor": home / ".cursor" / "mcp.json",
        "vscode": app_config / "Code" / "User" / "mcp.json",
    }
    return paths[client]


def read_config(path: Path) -> dict[str, Any]:
    """A client's JSON file ({} when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidInput("--config", str(path), f"cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            "--config", str(path), f"is not plain JSON ({exc.msg}, line {exc.lineno}; comments are not supported): "
            "fix it, or add the entry `wanx-mcp install ... --print` shows by hand"
        ) from None  # fmt: skip
    if not isinstance(document, dict):
        raise InvalidInput("--config", str(path), "does not hold a JSON object")
    return document


def configured(document: Mapping[str, Any], client: str) -> dict[str, dict[str, Any]]:
    """The entries of a client's configuration that launch wanx-mcp."""
    servers = document.get(group_of(client))
    if not isinstance(servers, dict):
        return {}
    return {
        name: entry for name, entry in servers.items()
        if isinstance(entry, dict) and "wanx" in " ".join(map(str, [entry.get("command", ""), *entry.get("args", [])]))
    }  # fmt: skip


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():  # not repeated: it may be a key typed without its name
            raise InvalidInput("--env", f"{len(pair)} characters", "must be KEY=VALUE, e.g. WANX_REGION=singapore")
        env[key.strip()] = value
    return env


def build_entry(
    simulate: bool, extra_env: Mapping[str, str], environ: Mapping[str, str], ask_key: bool
) -> Entry:
    """The entry: this interpreter (absolute, so the client's PATH never matters) running wanx_mcp."""
    env: dict[str, str] = {}
    if not simulate:
        key = extra_env.get(KEY) or environ.get(KEY)
        if not key and ask_key:
            if not sys.stdin.isatty():
                raise InvalidInput(KEY, "", "is not set; set it, pass --env DASHSCOPE_API_KEY=..., or use --simulate")
            key = getpass.getpass("DashScope API key (not echoed): ").strip()
        if key:
            env[KEY] = key
        env |= {name: environ[name] for name in KEY_COMPANIONS if environ.get(name)}
    env |= {k: v for k, v in extra_env.items() if k != KEY or not simulate}
    return Entry(
        name="wanx-simulator" if simulate else "wanx",
        command=str(Path(sys.executable).absolute()),
        args=["-m", "wanx_mcp", *(["serve", "--simulate"] if simulate else [])],
        env=env,
    )


def claude_mcp_add(entry: Entry) -> str:
    """The ``claude mcp add`` line that records ``entry`` for Claude Code (key hidden)."""
    words = ["claude", "mcp", "add", "--scope", "user", entry.name]
    for key, value in entry.env.items():
        words += ["--env", f"{key}={HIDDEN if key == KEY else value}"]
    return shlex.join([*words, "--", entry.command, *entry.args])


def _write(path: Path, document: Mapping[str, Any]) -> Path | None:
    """Write ``document`` to ``path`` atomically, keeping a timestamped backup of what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if path.exists():
        backup = path.with_name(f"{path.name}.{datetime.now():%Y%m%d-%H%M%S}.bak")
        backup.write_bytes(path.read_bytes())
    temporary = path.with_name(f".{path.name}.wanx-tmp")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if backup is not None:
        os.chmod(temporary, path.stat().st_mode & 0o777)
    else:
        os.chmod(temporary, 0o600)  # it holds an API key
    os.replace(temporary, path)
    return backup


def install(
    client: str,
    *,
    config: Path | None = None,
    env_pairs: Sequence[str] = (),
    simulate: bool = False,
    print_only: bool = False,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Install wanx-mcp into ``client``'s configuration (or only show it); the lines to tell the user.

    Idempotent: when the file already holds this entry nothing is written and no backup is made.
    """
    if client not in CLIENTS:
        raise InvalidInput("CLIENT", client, "unknown MCP client", valid=CLIENTS)
    environ = os.environ if environ is None else environ
    entry = build_entry(simulate, parse_env(env_pairs), environ, ask_key=not print_only)
    path = (config or config_path(client, environ)).expanduser()
    group = group_of(client)
    if print_only:
        shown = json.dumps({group: {entry.name: entry.as_json(client, hide_key=True)}}, indent=2)
        lines = [f"Add to {path}:", shown]
        if client == "claude-code":
            lines += ["or run:", claude_mcp_add(entry)]
        return lines
    document = read_config(path)
    servers = document.get(group)
    if servers is not None and not isinstance(servers, dict):
        raise InvalidInput("--config", str(path), f'has a "{group}" that is not a JSON object')
    wanted = entry.as_json(client)
    if (servers or {}).get(entry.name) == wanted:
        return [f"{path} already has this {entry.name!r} entry; nothing changed."]
    updated = {**document, group: {**(servers or {}), entry.name: wanted}}
    backup = _write(path, updated)
    lines = [f"Wrote the {entry.name!r} MCP server to {path}" + (f" (backup: {backup})" if backup else "") + "."]
    if KEY not in entry.env and not simulate:
        lines.append("note: no DASHSCOPE_API_KEY recorded; the server will answer MissingApiKey until it is set.")
    lines.append(f"Restart {client} to load it; `wanx-mcp doctor` checks the setup.")
    return lines
