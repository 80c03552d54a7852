"""Running the MCP server over stdio or streamable HTTP (bearer token, DNS-rebinding protection, video links,
a budget for request bodies in memory, header and idle timeouts)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import h11
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Settings
from .errors import InvalidInput
from .links import KINDS, LINK_PATH, LINK_TTL, VideoLinks, file_for
from .server import build_server
from .service import Wanx

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: Largest HTTP request body: a 20 MB image as a base64 data URI, plus the JSON around it.
MAX_REQUEST_BODY = 28 * 1024 * 1024
#: Request-body bytes all requests together may hold in memory; a request beyond it gets 503 + Retry-After.
MAX_BODIES_IN_FLIGHT = 2 * MAX_REQUEST_BODY
RETRY_AFTER_SECONDS = 1
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_SECONDS = 5
#: A client may stay silent mid-body this many times the header timeout (while the server is reading).
BODY_IDLE_FACTOR = 3
#: A timeout timer firing this many seconds late means the event loop was busy: look again this much later.
LATE_TIMER_SLACK = 0.5
#: Seconds a stopping HTTP server waits for open streams (e.g. a client's subscriptions/listen) to end.
GRACEFUL_SHUTDOWN = 3


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_matches(authorization: bytes, token: bytes) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <token>``: the scheme in any case, the token compared in
    constant time."""
    scheme, _, supplied = authorization.strip().partition(b" ")
    return hmac.compare_digest(supplied.strip(), token) and scheme.lower() == b"bearer"


class BearerToken:
    """ASGI middleware: HTTP requests must carry ``Authorization: Bearer <token>`` (see :func:`bearer_matches`)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = dict(scope["headers"]).get(b"authorization", b"") if scope["type"] == "http" else None
        if authorization is not None and not bearer_matches(authorization, self._expected):
            body = b'{"error": "unauthorized", "message": "send Authorization: Bearer $WANX_MCP_TOKEN"}'
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="wanx-mcp"'),
                (b"content-length", str(len(body)).encode()),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class BodyBudget:
    """ASGI middleware: at most ``limit`` request-body bytes in memory across all requests at once.

    A request reserves its declared ``Content-Length`` (``per_request`` when it declares none) until it is
    answered; one that would go over the budget while others hold it gets 503 with ``Retry-After``, its body
    read and dropped (never kept), so the client sees the answer instead of a reset connection.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODIES_IN_FLIGHT, per_request: int = MAX_REQUEST_BODY) -> None:
        self.app = app
        self.limit = limit
        self.per_request = per_request
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit():
            reserve = min(int(declared), self.per_request)
        else:
            reserve = self.per_request if b"transfer-encoding" in headers else 0
        if reserve and self.in_flight and self.in_flight + reserve > self.limit:
            log.warning("request body of %d bytes refused with 503: %d bytes in flight", reserve, self.in_flight)
            await self._drop_body(receive)
            body = b'{"error": "busy", "message": "too many large requests at once; retry shortly"}'
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                (b"content-length", str(len(body)).encode()),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += reserve
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= reserve

    async def _drop_body(self, receive: Receive) -> None:
        seen = 0
        while seen <= self.per_request:
            message: Message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return


def timed_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections that take over ``header_timeout`` seconds to send a request's
    headers (counted from the connection, or the previous answer), or stay silent mid-body for
    ``BODY_IDLE_FACTOR`` times that while the server is reading.

    uvicorn itself only times out keep-alive connections that send nothing at all. A timer that fires late (the
    event loop was busy, so the client's data may be waiting unread) looks again shortly instead of closing.
    """
    limits = {h11.IDLE: header_timeout, h11.SEND_BODY: header_timeout * BODY_IDLE_FACTOR}

    class TimedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _phase: Any = None  # h11.IDLE (waiting for headers), h11.SEND_BODY (reading a body) or None (not timed)
        _since = 0.0  # when the phase began; while reading a body, when data last came
        _due = 0.0  # when the timer is set to fire

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch(data_came=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._phase = None
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _watch(self, data_came: bool = False) -> None:
            state = self.conn.their_state
            phase = state if state in limits else None
            if phase is not self._phase:
                self._phase, self._since = phase, self.loop.time()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if phase is not None:
                    self._schedule(limits[phase])
            elif data_came and phase is h11.SEND_BODY:
                self._since = self.loop.time()

        def _schedule(self, delay: float) -> None:
            self._due = self.loop.time() + delay
            self._timer = self.loop.call_later(delay, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self._phase is None or self.transport.is_closing():
                return
            now, limit = self.loop.time(), limits[self._phase]
            if now - self._due > LATE_TIMER_SLACK:  # the loop was busy: read what may have come first
                self._schedule(LATE_TIMER_SLACK)
            elif self._phase is h11.SEND_BODY and self.flow.read_paused:  # we are not reading, not them
                self._since = now
                self._schedule(limit)
            elif now < self._since + limit:  # data came since the timer was set
                self._schedule(self._since + limit - now)
            else:
                what = "its request headers" if self._phase is h11.IDLE else "more of its request body"
                log.info("closed an HTTP connection that sent no %s for %g s", what, limit)
                self.transport.close()

    return TimedH11Protocol


class VideoFiles:
    """ASGI: ``GET``/``HEAD /videos/<task_id>.mp4`` (and ``.preview.jpg``) streamed from disk with range requests,
    for a request with a valid signed link or the bearer token; every other request goes on to ``app``."""

    def __init__(self, app: ASGIApp, wanx: Wanx, links: VideoLinks, token: str | None) -> None:
        self.app = app
        self.wanx = wanx
        self.links = links
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = LINK_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        response = await self._respond(Request(scope, receive), match["task_id"], match["kind"])
        await response(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        supplied = request.headers.get("authorization", "").encode()
        if self._token and bearer_matches(supplied, self._token):
            return True
        return self.links.verify(request.url.path, request.query_params.get("exp"), request.query_params.get("sig"))

    async def _respond(self, request: Request, task_id: str, kind: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse({"error": "method_not_allowed"}, 405, headers={"allow": "GET, HEAD"})
        if not self._authorized(request):
            return JSONResponse(
                {"error": "unauthorized", "message": "use the task's current video_link (get_task gives a fresh one) "
                 "or send Authorization: Bearer $WANX_MCP_TOKEN"},
                401, headers={"www-authenticate": 'Bearer realm="wanx-mcp"'},
            )  # fmt: skip
        task = await self.wanx.store.get(task_id)
        path = file_for(task, kind) if task else None
        if path is None:
            return JSONResponse({"error": "not_found", "message": f"task {task_id} has no saved {kind[1:]} file"}, 404)
        return FileResponse(path, media_type=KINDS[kind], headers={"cache-control": f"private, max-age={LINK_TTL}"})


def transport_security(host: str, port: int, extra_hosts: Sequence[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection on: the Host header must name this server (plus ``WANX_MCP_ALLOWED_HOSTS``)."""
    names = {"127.0.0.1", "localhost", "[::1]"} if is_loopback(host) or host in {"0.0.0.0", "::"} else set()
    if not is_loopback(host) and host not in {"0.0.0.0", "::"}:
        names.add(f"[{host}]" if ":" in host else host)
    names.update(extra_hosts)
    allowed_hosts = sorted({f"{name}:*" for name in names} | {f"{name}:{port}" for name in names} | names)
    origins = sorted({f"http://{name}:*" for name in names} | {f"https://{name}:*" for name in names})
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts, allowed_origins=origins
    )


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not token and not is_loopback(host):
        raise InvalidInput(
            "host", host, "binding a non-loopback address needs WANX_MCP_TOKEN set (clients send it as a Bearer token)"
        )


def http_app(wanx: Wanx, host: str, port: int) -> ASGIApp:
    """The streamable-HTTP ASGI app at ``/mcp`` for ``wanx``, behind the token check when a token is set, and the
    saved videos at ``/videos/`` (signed links, see :mod:`wanx_mcp.links`)."""
    token = wanx.settings.mcp_token
    check_exposure(host, token)
    links = VideoLinks.for_deployment(token, wanx.settings.data_dir)
    app: ASGIApp = build_server(wanx, links).streamable_http_app(
        transport_security=transport_security(host, port, wanx.settings.mcp_allowed_hosts),
        host=host,
        max_request_body_size=MAX_REQUEST_BODY,
    )
    app = BodyBudget(app)
    return VideoFiles(BearerToken(app, token) if token else app, wanx, links, token)


async def serve_stdio(settings: Settings) -> None:
    async with Wanx.open(settings) as wanx:
        await build_server(wanx).run_stdio_async()


async def serve_http(settings: Settings, host: str, port: int) -> None:
    check_exposure(host, settings.mcp_token)
    async with Wanx.open(settings) as wanx:
        app = http_app(wanx, host, port)
        log.info("wanx-mcp listening on http://%s:%d/mcp", host, port)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            http=timed_protocol(settings.http_header_timeout), timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )  # fmt: skip
        await uvicorn.Server(config).serve()
