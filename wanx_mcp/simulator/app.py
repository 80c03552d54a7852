"""The Starlette app: DashScope's task API under ``/api/v1``, result videos, and ``/_simulator`` admin."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from functools import cache
from importlib.resources import files
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .faults import ALLOWED, KINDS, Fault
from .responses import ConnectionDropped, CutResponse, api_error, api_json, oss_error, proxy_502
from .rules import FIRST_FRAME, KEYFRAMES
from .state import REQUEST_AGENT, SimulatorState
from .tasks import SimTask
from .videos import VideoCache, render_task

API = "/api/v1"
ENDLESS_CHUNK = 256 * 1024
ADMIN = "/_simulator"


@cache
def sample_video() -> bytes:
    """The MP4 every successful task produces when the simulator does not render (320x240, H.264)."""
    return (files("wanx_mcp.simulator") / "assets" / "sample.mp4").read_bytes()


def corrupt(video: bytes) -> bytes:
    """As long as ``video`` and starting with its ``ftyp`` box, the rest scrambled so that it cannot decode."""
    head = int.from_bytes(video[:4], "big")
    rest = random.Random(0).randbytes(len(video) - head)
    return video[:head] + rest


class _RequestLog:
    """Records method, path and status of every non-admin request ("dropped" when cut).

    A complete response is logged before its last bytes leave, so a client never sees an answer
    that the log does not show yet.
    """

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN):
            await self.app(scope, receive, send)
            return
        status = 500

        logged = False

        def log(outcome: int | str) -> None:
            nonlocal logged
            logged = True
            self.state.log_request(scope["method"], scope["path"], outcome)

        async def send_and_log(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                log(status)
            await send(message)

        agent = dict(scope["headers"]).get(b"user-agent")
        REQUEST_AGENT.set(None if agent is None else agent.decode("latin-1"))
        try:
            await self.app(scope, receive, send_and_log)
            if not logged:  # a stream the client stopped reading (the ``endless`` fault)
                log("client_closed")
        except ConnectionDropped:
            log("dropped")
            raise
        except Exception:
            log(500)
            raise


def create_app(state: SimulatorState) -> Starlette:
    """An ASGI app serving ``state``."""

    async def pause(request: Request, seconds: float) -> None:
        """Wait ``seconds``, less if the client goes away or the simulator stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not state.stopping.is_set():
            if await request.is_disconnected():
                return
            await anyio.sleep(min(0.05, left))

    async def before(request: Request, target: str) -> Response | None:
        """The answer a pending "before" fault imposes, if any (after sleeping, for ``delay``)."""
        fault = state.faults.take(target, before=True)
        if fault is None:
            return None
        if fault.kind == "delay":
            await pause(request, fault.seconds)
            return None
        if fault.kind == "html_502":
            return proxy_502()
        if fault.kind == "error":
            answer = oss_error if target == "download" else api_error
            return answer(fault.status or 500, fault.code or "InternalError", fault.message or "")
        if target == "download":
            video = sample_video()
            return CutResponse(video[:1024], len(video), "video/mp4")
        return CutResponse(b'{"request_id": "', 4096, "application/json")

    videos = VideoCache()

    async def result_video(task: SimTask) -> bytes:
        """The task's MP4: rendered from its images once (in a worker thread), or the sample."""
        config = state.config
        if not config.render:
            return sample_video()

        def render() -> bytes:
            images = state.images(task)
            seconds = task.request.duration
            return render_task(images, task.resolution, seconds, fps=config.fps, scale=config.render_scale)

        return await anyio.to_thread.run_sync(videos.get, task.task_id, render)

    async def endless(video: bytes) -> AsyncIterator[bytes]:
        """The video, then filler bytes, forever (until the client goes away or the simulator stops)."""
        yield video
        filler = bytes(ENDLESS_CHUNK)
        while not state.stopping.is_set():
            yield filler
            await anyio.sleep(0)

    def api_key(request: Request) -> str:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not state.authorized(key.strip()):
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
        return key.strip()

    def video_url(request: Request, task: SimTask) -> str:
        expires = int(state.video_expires_at(task))
        root = (state.config.video_base_url or str(request.base_url)).rstrip("/")
        return f"{root}/results/{task.task_id}.mp4?Expires={expires}&Signature=sim"

    async def create_task(request: Request) -> Response:
        arrived = state.clock.now()
        endpoint = request.url.path.removeprefix(API)
        state.count("creates_received")
        raw = await request.body()
        if (fault_response := await before(request, "create")) is not None:
            return fault_response
        key = api_key(request)
        if request.headers.get("x-dashscope-async", "").lower() != "enable":
            raise ApiError(403, "AccessDenied", "current user api does not support synchronous calls")
        authorization = request.headers["authorization"]

        def create() -> tuple[SimTask, Fault | None]:  # parsing and checking images: off the event loop
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = None
            return state.create(key, body, endpoint, authorization=authorization, arrived=arrived)

        task, fault = await anyio.to_thread.run_sync(create)
        answered_id = fault.value if fault is not None and fault.kind == "bad_task_id" else task.task_id
        response = JSONResponse(
            {"output": {"task_status": "PENDING", "task_id": answered_id}, "request_id": task.request_id}
        )
        if fault is not None and fault.kind == "accept_then_drop":
            sent = response.body
            return CutResponse(sent[: len(sent) // 2], len(sent), "application/json")
        if fault is not None and fault.kind == "accept_then_hang":
            await pause(request, fault.seconds)
        return response

    async def get_task(request: Request) -> Response:
        state.count("status_gets")
        if (fault_response := await before(request, "get")) is not None:
            return fault_response
        task_id = request.path_params["task_id"]
        task = state.get(api_key(request), task_id)
        if task is None:
            return api_json({"output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        body = {"output": task.output(state.clock, video_url(request, task))}
        if task.status == "SUCCEEDED":
            body["usage"] = task.usage()
        return api_json(body)

    async def cancel_task(request: Request) -> Response:
        state.count("cancels")
        if (fault_response := await before(request, "cancel")) is not None:
            return fault_response
        state.cancel(api_key(request), request.path_params["task_id"])
        return api_json({})

    async def list_tasks(request: Request) -> Response:
        state.count("lists")
        if (fault_response := await before(request, "list")) is not None:
            return fault_response
        return api_json(state.list_tasks(api_key(request), dict(request.query_params)))

    async def download(request: Request) -> Response:
        state.count("downloads")
        if (fault_response := await before(request, "download")) is not None:
            return fault_response
        task = state.video_task(request.path_params["task_id"])
        if task is None:
            return oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if state.clock.now() > state.video_expires_at(task):
            return oss_error(403, "AccessDenied", "Request has expired.")
        video = await result_video(task)
        fault = state.faults.take("download", before=False)
        if fault is None:
            return Response(video, media_type="video/mp4")
        if fault.kind == "corrupt_video":
            return Response(corrupt(video), media_type="video/mp4")
        if fault.kind == "endless":
            return StreamingResponse(endless(video), media_type="video/mp4")
        return CutResponse(video[: len(video) // 2], len(video), "video/mp4")

    async def add_faults(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            faults = [Fault.from_dict(item) for item in (data if isinstance(data, list) else [data])]
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        for fault in faults:
            state.faults.add_fault(fault)
        return JSONResponse({"faults": state.faults.pending()})

    async def show_faults(request: Request) -> Response:
        return JSONResponse({"faults": state.faults.pending(), "kinds": KINDS, "targets": ALLOWED})

    async def clear_faults(request: Request) -> Response:
        state.faults.clear()
        return JSONResponse({"faults": []})

    async def hold(request: Request) -> Response:
        try:
            data = json.loads(await request.body() or b"{}")
            pending = data.get("pending", True) if isinstance(data, dict) else None
        except ValueError:
            pending = None
        if not isinstance(pending, bool):
            return JSONResponse({"error": 'send {"pending": true} or {"pending": false}'}, status_code=400)
        state.hold_pending = pending
        return JSONResponse({"hold_pending": pending})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return api_error(exc.status, exc.code, exc.message)

    routes = [
        Route(f"{API}{FIRST_FRAME}", create_task, methods=["POST"]),
        Route(f"{API}{KEYFRAMES}", create_task, methods=["POST"]),
        Route(f"{API}/tasks/", list_tasks, methods=["GET"]),
        Route(f"{API}/tasks", list_tasks, methods=["GET"]),
        Route(f"{API}/tasks/{{task_id}}", get_task, methods=["GET"]),
        Route(f"{API}/tasks/{{task_id}}/cancel", cancel_task, methods=["POST"]),
        Route("/results/{task_id}.mp4", download, methods=["GET"]),
        Route(f"{ADMIN}/faults", add_faults, methods=["POST"]),
        Route(f"{ADMIN}/faults", show_faults, methods=["GET"]),
        Route(f"{ADMIN}/faults", clear_faults, methods=["DELETE"]),
        Route(f"{ADMIN}/hold", hold, methods=["POST"]),
        Route(f"{ADMIN}/stats", stats, methods=["GET"]),
        Route(f"{ADMIN}/reset", reset, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_RequestLog, state=state)],
        exception_handlers={ApiError: on_api_error},
    )
