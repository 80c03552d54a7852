"""Running the MCP server over stdio or streamable HTTP (bearer token, DNS-rebinding protection, video links)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Sequence

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings
from .errors import InvalidInput
from .links import KINDS, LINK_PATH, LINK_TTL, VideoLinks, file_for
from .server import build_server
from .service import Wanx

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: Largest HTTP request body: a 20 MB image as a base64 data URI, plus the JSON around it.
MAX_REQUEST_BODY = 28 * 1024 * 1024
#: Seconds a stopping HTTP server waits for open streams (e.g. a client's subscriptions/listen) to end.
GRACEFUL_SHUTDOWN = 3


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerToken:
    """ASGI middleware: HTTP requests must carry ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            supplied = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(supplied, self._expected):
                body = b'{"error": "unauthorized", "message": "send Authorization: Bearer $WANX_MCP_TOKEN"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="wanx-mcp"'),
                    (b"content-length", str(len(body)).encode()),
                ]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class VideoFiles:
    """ASGI: ``GET``/``HEAD /videos/<task_id>.mp4`` (and ``.preview.jpg``) streamed from disk with range requests,
    for a request with a valid signed link or the bearer token; every other request goes on to ``app``."""

    def __init__(self, app: ASGIApp, wanx: Wanx, links: VideoLinks, token: str | None) -> None:
        self.app = app
        self.wanx = wanx
        self.links = links
        self._bearer = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = LINK_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        response = await self._respond(Request(scope, receive), match["task_id"], match["kind"])
        await response(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        supplied = request.headers.get("authorization", "").encode()
        if self._bearer and hmac.compare_digest(supplied, self._bearer):
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
            app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN
        )
        await uvicorn.Server(config).serve()
