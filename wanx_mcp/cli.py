"""The ``wanx-mcp`` command: the MCP server, and commands for people (exit 0 ok, 1 API error, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .catalog import PARAMS, choices_of
from .config import Settings, load_settings
from .errors import InvalidInput, WanxError
from .service import Wanx
from .tasks import Task

EXIT_OK, EXIT_API, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
FOREVER = 24 * 3600.0

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    if getattr(args, "simulate", False):
        env["WANX_SIMULATE"] = "1"
    return load_settings(env)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _describe(task: Task) -> None:
    """A task for people: the facts that matter, then the hint."""
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


async def _wait_with_progress(wanx: Wanx, task: Task, wait_seconds: float) -> Task:
    estimate = wanx.watcher.estimate(task).seconds
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"{task.status}: {task.task_id}", total=None)

        async def show(current: Task, elapsed: float) -> None:
            left = max(0, int(estimate - wanx.watcher.elapsed(current.task_id)))
            eta = f", about {left} s left" if not current.is_final and left else ""
            state = "downloading" if current.status == "SUCCEEDED" and not current.video_path else current.status
            progress.update(bar, description=f"{state}: {current.task_id}{eta}")

        return await wanx.wait(task.task_id, wait_seconds, show)


async def _generate(args: argparse.Namespace) -> int:
    generation = {name: getattr(args, name) for name in PARAMS if getattr(args, name, None) is not None}
    async with Wanx.open(_settings(args)) as wanx:
        task = await wanx.create(generation)
        err.print(f"submitted {task.task_id} ({task.model}, {task.resolution}, {task.duration} s"
                  + (f", about {task.estimated_cost_cny} CNY)" if task.estimated_cost_cny is not None else ")"))
        for note in task.notes:
            err.print(f"note: {note}", markup=False)
        try:
            task = await _wait_with_progress(wanx, task, args.wait)
        except anyio.get_cancelled_exc_class():
            _interrupted(task.task_id)
            raise
    if args.json:
        _print_json(task.model_dump(mode="json"))
    else:
        _describe(task)
        if task.video_path:
            print(task.video_path)
    return EXIT_OK if task.status == "SUCCEEDED" else EXIT_API


def _interrupted(task_id: str) -> None:
    err.print(
        f"\nInterrupted. Task {task_id} keeps running upstream and is in the journal: "
        f"`wanx-mcp show {task_id} --wait 600` picks it up and downloads the video "
        "(a running wanx-mcp server does that on its own)."
    )


async def _show(args: argparse.Namespace) -> int:
    async with Wanx.open(_settings(args)) as wanx:
        task = await wanx.get(args.task_id)
        if args.wait and not (task.is_final and (task.video_path or task.status != "SUCCEEDED")):
            task = await _wait_with_progress(wanx, task, args.wait)
    if args.json:
        _print_json(task.model_dump(mode="json"))
    else:
        _describe(task)
    return EXIT_OK


async def _tasks(args: argparse.Namespace) -> int:
    async with Wanx.open(_settings(args)) as wanx:
        tasks = wanx.list(args.status, args.limit)
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
    else:
        anyio.run(serve_stdio, settings)
    return EXIT_OK


def _simulator(args: argparse.Namespace) -> int:
    from .simulator import serve

    serve(host=args.host, port=args.port, speed=args.speed)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return anyio.run(run_demo, args.real)


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
    root = argparse.ArgumentParser(prog="wanx-mcp", description=__doc__)
    commands = root.add_subparsers(dest="command")
    simulate_help = "use the built-in DashScope simulator (free, offline)"

    serve = commands.add_parser("serve", help="run the MCP server (the default)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--simulate", action="store_true", help=simulate_help)
    serve.set_defaults(run=_serve)

    generate = commands.add_parser("generate", help="make a video from an image, with progress")
    _add_generation_options(generate)
    generate.set_defaults(run=_generate, is_async=True)

    show = commands.add_parser("show", help="show one task (and optionally wait for it)")
    show.add_argument("task_id")
    show.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for the result")
    show.set_defaults(run=_show, is_async=True)

    tasks = commands.add_parser("tasks", help="list recent tasks from the journal")
    tasks.add_argument("--status", help="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED or UNKNOWN")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.set_defaults(run=_tasks, is_async=True)

    models = commands.add_parser("models", help="list the video models, limits and prices")
    models.set_defaults(run=_models)

    for sub in (generate, show, tasks, models):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    for sub in (generate, show, tasks):
        sub.add_argument("--simulate", action="store_true", help=simulate_help)

    sim = commands.add_parser("simulator", help="run the DashScope simulator on its own")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--speed", type=float, default=1.0, help="divide generation times by this")
    sim.set_defaults(run=_simulator)

    demo = commands.add_parser("demo", help="one generation through a real MCP client session")
    demo.add_argument("--real", action="store_true", help="use the real API (needs DASHSCOPE_API_KEY)")
    demo.set_defaults(run=_demo)
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
        err.print(f"error: {exc}", style="red", markup=False)
        return EXIT_INPUT
    except WanxError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        return EXIT_API
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
