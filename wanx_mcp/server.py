"""The MCP server: thin wiring of the Wanx library to MCP tools, resources and a prompt."""


import base64
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.apps import Apps, ResourceCsp
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ContentBlock,
    GetPromptResult,
    ImageContent,
    InputRequiredResult,
    TextContent,
    ToolAnnotations,
)
from pydantic import BaseModel, Field, ValidationError

from . import __version__
from .catalog import PARAMS
from .errors import InvalidInput, WanxError
from .links import VideoLinks
from .media import VideoError
from .request import check_known, generation_args, invalid_input
from .service import ModelInfo, Wanx, check_task_id
from .tasks import Status, Task

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 3600.0
#: Largest video the ``wanx://tasks/{task_id}/video`` resource returns (base64 in one message); larger: video_link.
MAX_VIDEO_RESOURCE_BYTES = 32 * 1024 * 1024

INSTRUCTIONS = """\
Turns a still image plus a text prompt into a short video with Alibaba Cloud DashScope's Wan models
(with last_frame: a video from that first frame to that last frame).
Generation is asynchronous, takes 1-5 minutes and is paid per second of video (see list_models for prices).
Use generate_and_wait for one video: it waits up to wait_seconds and, if the video is not ready by then,
returns the still-running task with a hint; then call get_task(task_id, wait_seconds=50) until it is final.
The server keeps watching every task and downloads the finished MP4 (video_path) before DashScope's link
expires (24 h), even if your call was cancelled. A finished task comes with a contact sheet of the video's
frames (an image) to check that it shows what was asked; `video` gives its size, length and frame rate, and
notes say where it contradicts the request. Never resubmit a task just because a wait ran out: that
costs money twice. Errors start with a code: InvalidInput means nothing was sent (fix the named argument).
"""

SUBMITS = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=True)
READS_UPSTREAM = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=True)
READS_LOCAL = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
CANCELS = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=True)

#: The MCP Apps player bound to generate_and_wait and get_task (the flat key is for pre-GA hosts).
PLAYER_URI = "ui://wanx/player.html"
PLAYER_TOOL_META = {"ui": {"resourceUri": PLAYER_URI}, "ui/resourceUri": PLAYER_URI}

P = ParamSpec("P")
R = TypeVar("R")

#: A Task as structured output, with the Task JSON as text and, when there is one, the preview image.
TaskResult = Annotated[CallToolResult, Task]
PreviewArg = Annotated[bool, Field(description="Once the video is saved, also return a contact sheet of its frames")]


class TaskList(BaseModel):
    tasks: list[Task]


class ModelList(BaseModel):
    models: list[ModelInfo]


def _tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn our errors into ToolErrors, whose message (leading with the code) reaches the agent."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except WanxError as exc:
            raise ToolError(str(exc)) from exc

    return wrapper


def _with_generation_args(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Give ``fn(args: dict, **rest)`` a flat signature: the catalog's generation arguments, then ``rest``."""
    signature = inspect.signature(fn)
    own = [p for name, p in signature.parameters.items() if name != "args"]
    fields = generation_args().model_fields
    generation = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[field.annotation, field],
            default=inspect.Parameter.empty if field.is_required() else field.default,
        )
        for name, field in fields.items()
    ]

    @functools.wraps(fn)
    async def wrapper(**kwargs: Any) -> R:
        args = {name: kwargs.pop(name) for name in PARAMS if name in kwargs}
        return await fn(args=args, **kwargs)

    params = [*generation, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
    returns = signature.return_annotation
    wrapper.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    return wrapper


_REJECTED = "_rejected"  # never an argument's name: the SDK refuses parameters starting with "_"


class _CheckedArguments(FuncMetadata):
    """The SDK's argument handling, but an unknown or mistyped argument is an InvalidInput naming it (raised as
    the tool's error when it runs), and only the arguments given reach the tool (it tells defaults from choices)."""

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        names = {field.alias or name: name for name, field in self.arg_model.model_fields.items()}
        try:
            check_known(arguments_to_validate, names)
            try:
                parsed = self.arg_model.model_validate(self.pre_parse_json(arguments_to_validate))
            except ValidationError as exc:
                raise invalid_input(exc) from None
        except InvalidInput as exc:
            return {_REJECTED: exc}
        return {key: getattr(parsed, name) for key, name in names.items() if name in parsed.model_fields_set}

    async def call_fn(
        self,
        fn: Callable[..., Any],
        fn_is_async: bool,
        arguments: dict[str, Any],
        arguments_to_pass_directly: dict[str, Any] | None = None,
    ) -> Any:
        if _REJECTED in arguments:
            raise ToolError(str(arguments[_REJECTED]))
        return await super().call_fn(fn, fn_is_async, arguments, arguments_to_pass_directly)


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    """An input schema as an LLM needs it: no titles, no ``null`` branch for an optional argument (leave it out),
    no arguments beyond the listed ones."""
    properties = {}
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k != "title" and not (k == "default" and v is None)}
        branches = prop.pop("anyOf", None)
        if branches is not None:
            kept = [b for b in branches if b != {"type": "null"}]
            prop |= kept[0] if len(kept) == 1 else {"anyOf": kept}
        properties[name] = prop
    compact = {k: v for k, v in schema.items() if k != "title"}
    return compact | {"properties": properties, "additionalProperties": False}


def _tool(fn: Callable[..., Any], **options: Any) -> Tool:
    """``fn`` as a tool with checked arguments, a compact input schema and its docstring, dedented, as description."""
    tool = Tool.from_function(fn, description=inspect.cleandoc(fn.__doc__ or ""), **options)
    checked = _CheckedArguments(**{name: getattr(tool.fn_metadata, name) for name in FuncMetadata.model_fields})
    return tool.model_copy(update={"fn_metadata": checked, "parameters": _compact(tool.parameters)})


def _progress_reporter(ctx: Context) -> Callable[[Task, float], Awaitable[None]]:
    """MCP progress notifications (strictly increasing elapsed seconds) for a waiting tool."""
    last = -1.0

    async def report(task: Task, elapsed: float) -> None:
        nonlocal last
        last = max(elapsed, last + 0.001)
        message = f"{task.status} after {int(elapsed)} s"
        if task.hint and not task.is_final:
            message += f": {task.hint.split(';')[0]}"
        await ctx.report_progress(round(last, 3), None, message)

    return report


class _Server(MCPServer):
    """The SDK's server, with prompt errors as clean ``INVALID_PARAMS`` errors (no code 0, no traceback)."""

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context | None = None
    ) -> GetPromptResult | InputRequiredResult:
        known = [prompt.name for prompt in await self.list_prompts()]
        if name not in known:
            raise MCPError(INVALID_PARAMS, str(InvalidInput("name", name, "unknown prompt", valid=known)))
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as exc:  # the SDK's wrapping of missing or ill-typed arguments
            raise MCPError(INVALID_PARAMS, f"InvalidInput: prompt {name}: {exc}") from None


def player_app() -> Apps:
    """The MCP Apps extension with the inline player: it asks get_task for progress, then plays the video read
    through ``wanx://tasks/{task_id}/video``. It loads nothing from the network, so its CSP allows no domain."""
    apps = Apps()
    apps.add_html_resource(
        PLAYER_URI,
        (files("wanx_mcp") / "player" / "player.html").read_text(encoding="utf-8"),
        title="Wan video player",
        description="Shows a video task's progress, then plays the video with its prompt, model and cost",
        csp=ResourceCsp(connect_domains=[], resource_domains=[], frame_domains=[], base_uri_domains=[]),
        prefers_border=True,
    )
    return apps


def build_server(wanx: Wanx, links: VideoLinks | None = None) -> MCPServer:
    """An MCP server exposing ``wanx``; resource-updated events go out as tasks change. With ``links`` (the HTTP
    transport), tasks with a saved video carry this server's own ``video_link``."""
    bus = InMemorySubscriptionBus()
    tools: list[Tool] = []

    def tool(**options: Any) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        def register(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            tools.append(_tool(fn, **options))
            return fn

        return register

    wait_default = wanx.settings.wait_seconds

    def linked(task: Task, ctx: Context) -> Task:
        """``task`` with links to its saved files under the URL the HTTP client reached this server at."""
        base_url = getattr(ctx.request_context.request, "base_url", None) if links else None
        return links.attach(task, str(base_url)) if links and base_url else task

    async def publish(task: Task) -> None:
        await bus.publish(ResourceUpdated(uri=f"wanx://tasks/{task.task_id}"))
        await bus.publish(ResourceUpdated(uri="wanx://tasks"))

    wanx.watcher.on_change = publish

    async def preview_image(task: Task) -> ImageContent | None:
        """The contact sheet of a SUCCEEDED task's saved video, if it can be had."""
        saved = task.video_path if task.status is Status.SUCCEEDED else None
        if not saved or not await anyio.Path(saved).is_file():
            return None  # nothing saved on this machine (yet)
        try:
            sheet = await wanx.media.preview(Path(saved))
        except (VideoError, OSError) as exc:
            log.warning("no preview for %s: %s", task.task_id, exc)
            return None
        return ImageContent(type="image", data=base64.b64encode(sheet).decode("ascii"), mime_type="image/jpeg")

    async def task_result(task: Task, preview: bool) -> CallToolResult:
        """``task`` as structured output and JSON text, followed by its preview image when asked and enabled."""
        content: list[ContentBlock] = [TextContent(type="text", text=task.model_dump_json(indent=2))]
        image = await preview_image(task) if preview and wanx.settings.preview else None
        if image is not None:
            content.append(image)
        return CallToolResult(content=content, structured_content=task.model_dump(mode="json"))

    def check_wait(wait_seconds: float) -> float:
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise ToolError(f"InvalidInput: wait_seconds={wait_seconds!r}: must be between 0 and {MAX_WAIT_SECONDS:g}")
        return wait_seconds

    @tool(
        title="Start an image-to-video task",
        annotations=SUBMITS,
    )
    @_with_generation_args
    @_tool_errors
    async def create_video_task(args: dict[str, Any]) -> Task:
        """Start a video generation (paid per second of video); returns the PENDING task at once.

        The server follows it and saves the MP4; wait with get_task. InvalidInput: nothing was sent.
        """
        return await wanx.create(args)

    @tool(
        title="Generate a video and wait for it",
        annotations=SUBMITS,
        meta=PLAYER_TOOL_META,
    )
    @_with_generation_args
    @_tool_errors
    async def generate_and_wait(
        args: dict[str, Any],
        ctx: Context,
        wait_seconds: Annotated[
            float,
            Field(description="Seconds to wait (below MCP clients' ~60 s timeout); then the running task returns"),
        ] = wait_default,
        preview: PreviewArg = True,
    ) -> TaskResult:
        """Generate a video (paid per second of video) and wait for it, with progress.

        Returns the final task (video_path: the saved MP4; with a contact sheet of its frames) or, if wait_seconds
        run out, the running task: then call get_task(task_id, wait_seconds=50); never resubmit (that pays twice).
        InvalidInput: nothing was sent.
        """
        task = await wanx.generate(args, check_wait(wait_seconds), _progress_reporter(ctx))
        return await task_result(linked(task, ctx), preview)

    @tool(
        title="Get (and optionally wait for) a task",
        annotations=READS_UPSTREAM,
        meta=PLAYER_TOOL_META,
    )
    @_tool_errors
    async def get_task(
        task_id: str,
        ctx: Context,
        wait_seconds: Annotated[float, Field(description="Wait up to this long for the final result")] = 0,
        preview: PreviewArg = True,
    ) -> TaskResult:
        """A task's status and results (video_path, video facts, video_url, actual_prompt, error_code), with
        progress, and a contact sheet of the video's frames once it is saved."""
        task = await wanx.get(task_id, check_wait(wait_seconds), _progress_reporter(ctx))
        return await task_result(linked(task, ctx), preview)

    @tool(
        title="Cancel a pending task",
        annotations=CANCELS,
    )
    @_tool_errors
    async def cancel_task(task_id: str) -> Task:
        """Cancel a PENDING (queued) task; a RUNNING one cannot be stopped."""
        return await wanx.cancel(task_id)

    @tool(
        title="List recent tasks",
        annotations=READS_UPSTREAM,
    )
    @_tool_errors
    async def list_tasks(
        ctx: Context,
        status: Annotated[str | None, Field(json_schema_extra={"enum": list(Status)})] = None,
        limit: Annotated[int, Field(description="1-500")] = 20,
        start_time: Annotated[str | None, Field(description="ISO 8601; at most 24 h back")] = None,
        model_name: str | None = None,
    ) -> TaskList:
        """Tasks this server submitted, newest first. With start_time or model_name: DashScope's list of the
        account's tasks (finds the task of an AmbiguousCreate, which is then followed like any other)."""
        if start_time is None and model_name is None:
            tasks = await wanx.list(status, limit)
        else:
            tasks = await wanx.find(start_time, model_name, status, limit)
        return TaskList(tasks=[linked(task, ctx) for task in tasks])

    @tool(
        title="List the video models",
        annotations=READS_LOCAL,
    )
    async def list_models() -> ModelList:
        """The models: resolutions, durations, templates, arguments, limits, prices."""
        return ModelList(models=wanx.models())

    server = _Server(
        "wanx-mcp",
        title="Wan image-to-video (DashScope)",
        instructions=INSTRUCTIONS,
        version=__version__,
        subscriptions=bus,
        extensions=[player_app()],
        tools=tools,
    )

    @server.resource("wanx://models", mime_type="application/json", title="Video models")
    async def models_resource() -> str:
        return ModelList(models=wanx.models()).model_dump_json(indent=2)

    @server.resource("wanx://tasks", mime_type="application/json", title="Recent tasks")
    async def tasks_resource() -> str:
        return TaskList(tasks=await wanx.list(limit=50)).model_dump_json(indent=2)

    async def journaled(task_id: str) -> Task:
        try:
            task = await wanx.store.get(check_task_id(task_id))
        except WanxError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        if task is None:
            raise ResourceNotFoundError(f"No task {task_id} in the journal")
        return task

    async def saved_video(task_id: str) -> anyio.Path:
        task = await journaled(task_id)
        if not task.video_path or not await anyio.Path(task.video_path).is_file():
            raise ResourceNotFoundError(f"Task {task_id} has no downloaded video (status {task.status})")
        return anyio.Path(task.video_path)

    @server.resource("wanx://tasks/{task_id}", mime_type="application/json", title="One task")
    async def task_resource(task_id: str) -> str:
        return (await journaled(task_id)).model_dump_json(indent=2)

    @server.resource("wanx://tasks/{task_id}/video", mime_type="video/mp4", title="A task's video")
    async def video_resource(task_id: str) -> bytes:
        path = await saved_video(task_id)
        size = (await path.stat()).st_size
        if size > MAX_VIDEO_RESOURCE_BYTES:
            raise ResourceError(
                f"The video of task {task_id} is {size / 2**20:.0f} MB, more than this resource sends at once "
                f"({MAX_VIDEO_RESOURCE_BYTES // 2**20} MB): fetch the task's video_link (HTTP transport) or read "
                f"video_path on the server's machine"
            )
        return await path.read_bytes()

    @server.resource("wanx://tasks/{task_id}/preview", mime_type="image/jpeg", title="A task's video, frame by frame")
    async def preview_resource(task_id: str) -> bytes:
        """A contact sheet of the saved video: frames spread over it, each with its time."""
        video = await saved_video(task_id)
        try:
            return await wanx.media.preview(Path(video))
        except (VideoError, OSError) as exc:
            raise ResourceNotFoundError(f"Task {task_id} has no preview: {exc}") from exc

    @server.prompt(title="Write a motion prompt")
    async def motion_prompt(
        subject: Annotated[str, Field(description="What the image shows, e.g. 'a red fox in snow'")],
        motion: Annotated[str, Field(description="What should move and how")] = "",
    ) -> str:
        """Guidance for a good Wan image-to-video prompt."""
        return (
            f"Write a prompt (at most 800 characters) for an image-to-video model animating: {subject}.\n"
            f"Intended motion: {motion or 'natural, subtle motion that fits the scene'}.\n"
            "Describe, in one or two sentences: the subject's motion (verbs, speed), the camera (static, slow "
            "push-in, pan left, orbit), the atmosphere and lighting; keep what is in the image consistent; "
            "avoid asking for new objects or text. Put unwanted artefacts in negative_prompt "
            "(e.g. 'blurry, distorted hands, flicker'). Then call generate_and_wait with the image and prompt."
        )

    return server
