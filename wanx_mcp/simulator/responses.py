"""The bodies DashScope, its proxies and OSS answer with, including broken ones."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

PROXY_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)


class ConnectionDropped(Exception):
    """Raised after a deliberately incomplete response so that the server closes the connection."""


def request_id() -> str:
    return str(uuid.uuid4())


def api_json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    """A DashScope answer: ``body`` plus a fresh ``request_id``."""
    return JSONResponse({**body, "request_id": request_id()}, status_code=status)


def api_error(status: int, code: str, message: str) -> JSONResponse:
    return api_json({"code": code, "message": message}, status)


def proxy_502() -> Response:
    return Response(PROXY_502, status_code=502, media_type="text/html")


def oss_error(status: int, code: str, message: str) -> Response:
    """An OSS error document, as the result-video host sends it."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{uuid.uuid4().hex[:24].upper()}</RequestId>\n  <HostId>simulator</HostId>\n</Error>\n"
    )
    return Response(xml, status_code=status, media_type="application/xml")


class CutResponse(Response):
    """Headers promising ``declared_length`` bytes, only ``body`` sent, then the connection cut."""

    def __init__(self, body: bytes, declared_length: int, media_type: str, status_code: int = 200) -> None:
        super().__init__(body, status_code=status_code, media_type=media_type)
        self.declared_length = max(declared_length, len(body) + 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        headers.append((b"content-length", str(self.declared_length).encode()))
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        raise ConnectionDropped
