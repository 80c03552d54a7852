"""The wanx-mcp command: the MCP server, and commands for people."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .catalog import PARAMS, choices_of
from .config import Settings, load_settings
from .errors import InvalidInput, Surface, WanxError
from .service import Wanx
from .tasks import Task, hint_for
from .watcher import remaining_seconds

EXIT_OK, EXIT_API, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
FOREVER = 24 * 3600.0
#: Seconds between two redraws of the progress bar.
TICK = 0.5

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


DESCRIPTION = """\
The wanx-mcp command. Run without a command (or with `serve`) it is an MCP server on stdio, which is what
an MCP client launches. The other commands are for people: try `wanx-mcp demo`, then
`wanx-mcp generate photo.jpg "the waves roll in"`; add --simulate to any of them to use the free simulator.
Exit codes: 0 ok, 1 API error / failed or unknown task / wait ran out, 2 bad input, 130 interrupted."""

TERMINAL_NOTICE = """\
wanx-mcp is an MCP server: it speaks JSON-RPC on stdin/stdout to an MCP client (Claude Desktop, Claude Code,
Cursor, VS Code), which launches it by itself; `wanx-mcp install CLIENT` sets that up.
To try it here: `wanx-mcp demo` (free, offline), `wanx-mcp generate IMAGE "PROMPT" --simulate`,
`wanx-mcp --help`. Ctrl-C ends this server."""


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    if getattr(args, "simulate", False):
        env["WANX_SIMULATE"] = "1"
    return load_settings(env)


def _surface(args: argparse.Namespace) -> Surface:
    """Messages for a person, whose suggested commands carry --simulate when this one did."""
    return Surface(cli=True, simulate=bool(getattr(args, "simulate", False)))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _describe(task: Task) -> None:
    """A task for people: the facts that matter, then the hint (already in a person's words)."""
    rows = [
        ("task", task.task_id), ("status", str(task.status)), ("model", task.model),
        ("resolution", task.resolution), ("duration", f"{task.duration} s" if task.duration else None),
        ("prompt", task.prompt), ("actual prompt", task.actual_prompt), ("created", task.created_at),
        ("finished", task.finished_at), ("cost (est.)", f"{task.estimated_cost_cny} CNY" if task.estimated_cost_cny
                                         is not None else None),
        ("error", f"{task.error_code}: {task.error_message}" if task.error_code else None),
        ("video url", task.video_url), ("url expires", task.video_url_expires_at), ("video", task.video_path),
    ]  # fmt: skip
    for label, value in rows:
        if value:
            out.print(f"[bold]{label:>13}[/bold]  {escape(str(value))}")
    for note in task.notes:
        out.print(f"[bold]{'note':>13}[/bold]  {escape(note)}")
    if task.hint:
        out.print(f"\n{task.hint}", markup=False)


async def _for_people(wanx: Wanx, task: Task, surface: Surface) -> Task:
    """``task`` with its hint in a person's words."""
    return task.model_copy(update={"hint": hint_for(task, await remaining_seconds(wanx.watcher, task), surface)})


async def _wait_with_progress(wanx: Wanx, task: Task, wait_seconds: float, surface: Surface) -> Task:
    """Wait with a bar that fills over the server's estimate of the generation time, and the time left."""
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), TimeElapsedColumn())
    latest = task
    estimate = (await wanx.watcher.estimate(task)).seconds
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"{task.status}: {task.task_id}", total=estimate)

        def update() -> None:
            done = wanx.watcher.elapsed(latest)
            left = 0.0 if latest.is_final else max(estimate - done, 0.0)
            state = "downloading" if latest.status == "SUCCEEDED" and not latest.video_path else latest.status
            progress.update(bar, description=f"{state}: {latest.task_id}", completed=done, total=done + left)

        async def show(current: Task, elapsed: float) -> None:
            nonlocal latest
            latest = current
            update()

        async def tick() -> None:
            while True:
                update()
                await anyio.sleep(TICK)

        async with anyio.create_task_group() as group:
            group.start_soon(tick)
            task = await wanx.wait(task.task_id, wait_seconds, show)
            group.cancel_scope.cancel()
    return await _for_people(wanx, task, surface)


async def _generate(args: argparse.Namespace) -> int:
    generation = {name: getattr(args, name) for name in PARAMS if getattr(args, name, None) is not None}
    surface = _surface(args)
    async with Wanx.open(_settings(args)) as wanx:
        download = wanx.settings.download
        task = await wanx.create(generation)
        err.print(f"submitted {task.task_id} ({task.model}, {task.resolution}, {task.duration} s"
                  + (f", about {task.estimated_cost_cny} CNY)" if task.estimated_cost_cny is not None else ")"))
        for note in task.notes:
            err.print(f"note: {note}", markup=False)
        try:
            task = await _wait_with_progress(wanx, task, args.wait, surface)
        except anyio.get_cancelled_exc_class():
            _interrupted(task.task_id, surface)
            raise
    if args.json:
        _print_json(task.model_dump(mode="json"))
    else:
        _describe(task)
        if task.video_path:
            print(task.video_path)
    return EXIT_OK if task.status == "SUCCEEDED" and _settled(task, download) else EXIT_API


def _interrupted(task_id: str, surface: Surface) -> None:
    err.print(
        f"\nInterrupted. Task {task_id} keeps running upstream and is in the journal: "
        f"{surface.command(f'show {task_id} --wait 600')} picks it up and downloads the video "
        "(a running wanx-mcp server does that on its own).",
        markup=False,
    )


def _settled(task: Task, download: bool) -> bool:
    """Whether there is nothing left to wait for: the task is final and its video saved (if it is to be)."""
    return task.is_final and (task.status != "SUCCEEDED" or bool(task.video_path) or not download)


def _show_exit(task: Task, waited: bool, download: bool) -> int:
    """0 for a task that is done or, without --wait, still running; 1 for a failed or unknown task, or when
    the wait ran out."""
    if task.status in ("FAILED", "UNKNOWN") or (waited and not _settled(task, download)):
        return EXIT_API
    return EXIT_OK


async def _show(args: argparse.Namespace) -> int:
    surface = _surface(args)
    async with Wanx.open(_settings(args)) as wanx:
        task = await _for_people(wanx, await wanx.get(args.task_id), surface)
        download = wanx.settings.download
        if args.wait and not _settled(task, download):
            try:
                task = await _wait_with_progress(wanx, task, args.wait, surface)
            except anyio.get_cancelled_exc_class():
                _interrupted(task.task_id, surface)
                raise
    if args.json:
        _print_json(task.model_dump(mode="json"))
    else:
        _describe(task)
    return _show_exit(task, bool(args.wait), download)


async def _tasks(args: argparse.Namespace) -> int:
    async with Wanx.open(_settings(args)) as wanx:
        tasks = [await _for_people(wanx, t, _surface(args)) for t in await wanx.list(args.status, args.limit)]
    if args.json:
        _print_json({"tasks": [t.model_dump(mode="json") for t in tasks]})
        return EXIT_OK
    table = Table("task", "status", "model", "res", "s", "created (UTC)", "video / error")
    for task in tasks:
        detail = task.video_path or (f"{task.error_code}" if task.error_code else "")
        table.add_row(task.task_id, str(task.status), task.model, task.resolution, str(task.duration or ""),
                      (task.created_at or "")[:19].replace("T", " "), detail)  # fmt: skip
    out.print(table if tasks else "No tasks yet.")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    models = Wanx.models()
    if args.json:
        _print_json({"models": [m.model_dump(mode="json") for m in models]})
        return EXIT_OK
    table = Table("model", "resolutions (default)", "seconds", "CNY/s (Beijing)", "templates", "")
    for m in models:
        prices = ", ".join(f"{r} {p}" if p is not None else f"{r} ?" for r, p in m.price_cny_per_second.items())
        seconds = f"{m.durations[0]}-{m.durations[-1]}" if len(m.durations) > 1 else str(m.durations[0])
        table.add_row(m.name, f"{'/'.join(m.resolutions)} ({m.default_resolution})", seconds, prices,
                      str(len(m.templates) or ""), "recommended" if m.recommended else "")  # fmt: skip
    out.print(table)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from .transports import serve_http, serve_stdio

    settings = _settings(args)
    if args.transport == "http":
        anyio.run(serve_http, settings, args.host, args.port)
        return EXIT_OK
    if sys.stdin.isatty():  # a person, not an MCP client: say what this is, and let Ctrl-C end it at once
        err.print(TERMINAL_NOTICE, markup=False)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    anyio.run(serve_stdio, settings)
    return EXIT_OK


def _simulator(args: argparse.Namespace) -> int:
    from .simulator import serve

    serve(host=args.host, port=args.port, speed=args.speed)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return anyio.run(run_demo, args.real)


def _install(args: argparse.Namespace) -> int:
    from .install import install

    lines = install(args.client, config=args.config, env_pairs=args.env, simulate=args.simulate,
                    print_only=args.print)  # fmt: skip
    for line in lines:
        out.print(line, markup=False)
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import describe, exit_code, run_checks

    if args.rebuild_journal:
        return anyio.run(_rebuild_journal, args)
    checks = run_checks(_settings(args))
    if args.json:
        _print_json({"ok": exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]})
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in checks:
            out.print(describe(check), style=styles[check.level], markup=False)
    return exit_code(checks)


async def _rebuild_journal(args: argparse.Namespace) -> int:
    """Set a (damaged) SQLite journal aside, start a new one and journal the account's last 24 hours into it."""
    from .store.sqlite import set_aside

    settings = _settings(args)
    if settings.database_url:
        raise InvalidInput("--rebuild-journal", True, "is for the SQLite journal; WANX_DATABASE_URL names PostgreSQL")
    moved = set_aside(settings.journal_path)
    err.print(f"set {settings.journal_path} aside as {moved.name}" if moved else "there was no journal", markup=False)
    async with Wanx.open(settings) as wanx:
        tasks = await wanx.relist()
    if args.json:
        _print_json({"set_aside": str(moved) if moved else None, "tasks": [t.model_dump(mode="json") for t in tasks]})
        return EXIT_OK
    for task in tasks:
        out.print(f"{task.task_id}  {task.status}  {task.model}  {task.created_at or ''}", markup=False)
    err.print(f"journaled {len(tasks)} task(s) of the last 24 hours from DashScope's task list; a running wanx-mcp "
              "follows them and downloads their videos (or: wanx-mcp show TASK_ID --wait 600)", markup=False)
    return EXIT_OK


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """IMAGE [PROMPT] and a flag for every other generation argument in the catalog (``--no-x``: default on)."""
    p.add_argument("image", help="image file, file:// URI, http(s) URL or data: URI")
    p.add_argument("prompt", nargs="?", help="what should happen in the video")
    for name, param in PARAMS.items():
        if name in ("image", "prompt"):
            continue
        flag = "--" + name.replace("_", "-")
        text = param.description or ", ".join(map(str, choices_of(name))) or name.replace("_", " ")
        if param.type is not bool:
            p.add_argument(flag, dest=name, type=param.type, help=text)
        elif param.default is True:
            p.add_argument(f"--no-{flag[2:]}", dest=name, action="store_false", default=None, help=f"not: {text}")
        elif param.default is False:
            p.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=text)
    p.add_argument("--wait", type=float, default=FOREVER, help="give up waiting after this many seconds")


def parser() -> argparse.ArgumentParser:
    from .install import CLIENTS

    root = argparse.ArgumentParser(prog="wanx-mcp", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = root.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the MCP server (the default)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                       help="stdio for a client that launches the server (default); http for a shared deployment")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP: the port (default 8000); the MCP endpoint is /mcp")
    serve.set_defaults(run=_serve)

    generate = commands.add_parser("generate", help="make a video from an image, with progress")
    _add_generation_options(generate)
    generate.set_defaults(run=_generate, is_async=True)

    show = commands.add_parser("show", help="show one task (and optionally wait for it)")
    show.add_argument("task_id", help="the DashScope task id (from `wanx-mcp tasks`)")
    show.add_argument("--wait", type=float, default=0,
                      help="wait up to this many seconds for the result and the download (exit 1 if it runs out)")
    show.set_defaults(run=_show, is_async=True)

    tasks = commands.add_parser("tasks", help="list recent tasks from the journal")
    tasks.add_argument("--status", help="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED or UNKNOWN")
    tasks.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default 20)")
    tasks.set_defaults(run=_tasks, is_async=True)

    models = commands.add_parser("models", help="list the video models, limits and prices")
    models.set_defaults(run=_models)

    sim = commands.add_parser("simulator", help="run the DashScope simulator on its own")
    sim.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8765, help="the port (default 8765)")
    sim.add_argument("--speed", type=float, default=1.0,
                     help="divide generation times by this (default 1: as slow as DashScope)")
    sim.set_defaults(run=_simulator)

    demo = commands.add_parser("demo", help="one generation through a real MCP client session")
    demo.add_argument("--real", action="store_true", help="use the real API (needs DASHSCOPE_API_KEY)")
    demo.set_defaults(run=_demo)

    install = commands.add_parser("install", help="add wanx-mcp to an MCP client's configuration")
    install.add_argument("client", choices=CLIENTS, help="the MCP client to configure")
    install.add_argument("--config", type=Path, help="this file instead of the client's usual one "
                         "(e.g. .vscode/mcp.json for one VS Code workspace)")  # fmt: skip
    install.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                         help="an environment variable for the server (repeatable), e.g. WANX_REGION=singapore")
    install.add_argument("--print", action="store_true", help="show the configuration instead of writing it")
    install.set_defaults(run=_install)

    doctor = commands.add_parser("doctor", help="check the key, region, data folder, journal and client configs")
    doctor.add_argument("--rebuild-journal", action="store_true",
                        help="set a damaged journal aside, start a new one and journal the account's tasks of the "
                        "last 24 hours from DashScope's task list")  # fmt: skip
    doctor.set_defaults(run=_doctor)

    for sub in (generate, show, tasks, models, doctor):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    simulate_help = {
        "demo": "use the built-in simulator (the default; --real uses DashScope)",
        "simulator": "accepted for symmetry: this command is the simulator",
        "install": "configure the built-in simulator instead of DashScope (no key needed)",
    }
    for name, sub in commands.choices.items():
        sub.add_argument("--simulate", action="store_true",
                         help=simulate_help.get(name, "use the built-in DashScope simulator (free, offline)"))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        args = parser().parse_args(["serve", *(argv or [])])
    level = os.environ.get("WANX_LOG_LEVEL", "INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run: Callable[[argparse.Namespace], Any] = args.run
    try:
        if getattr(args, "is_async", False):
            coroutine: Callable[[argparse.Namespace], Awaitable[int]] = run
            return anyio.run(coroutine, args)
        return int(run(args))
    except InvalidInput as exc:
        err.print(f"error: {exc.render(_surface(args))}", style="red", markup=False)
        return EXIT_INPUT
    except WanxError as exc:
        err.print(f"error: {exc.render(_surface(args))}", style="red", markup=False)
        return EXIT_API
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
