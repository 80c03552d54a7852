"""Signed, expiring links to saved videos and their previews, served by the HTTP transport itself.

A link is ``{base}videos/{task_id}.mp4?exp={unix seconds}&sig={hex}`` (or ``.preview.jpg``), the signature an
HMAC-SHA256 over the path and expiry with a key derived from ``WANX_MCP_TOKEN`` (so every replica sharing the
token honours every link), or, without a token, from a random secret kept in the data folder.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from .tasks import Task

#: How long a link in a Task stays valid; get_task hands out a fresh one.
LINK_TTL = 24 * 3600
#: Served files: a task's MP4 and its preview image, beside each other in the videos folder.
KINDS = {".mp4": "video/mp4", ".preview.jpg": "image/jpeg"}
LINK_PATH = re.compile(r"/videos/(?P<task_id>[A-Za-z0-9-]{8,128})(?P<kind>\.mp4|\.preview\.jpg)")
SECRET_FILE = "link-secret"


def _key_from_data_dir(data_dir: Path) -> bytes:
    """This deployment's random link secret, created (owner-only) on first use."""
    path = data_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as sink:
            sink.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())


def file_for(task: Task, kind: str) -> Path | None:
    """The saved file a link of ``kind`` (``.mp4`` or ``.preview.jpg``) serves for ``task``, if it exists."""
    if not task.video_path:
        return None
    video = Path(task.video_path)
    path = video if kind == ".mp4" else video.with_name(f"{task.task_id}{kind}")
    return path if path.is_file() else None


class VideoLinks:
    """Makes and checks the signed links of one deployment."""

    def __init__(self, key: bytes, ttl: float = LINK_TTL) -> None:
        self._key = key
        self.ttl = ttl

    @classmethod
    def for_deployment(cls, token: str | None, data_dir: Path) -> VideoLinks:
        secret = token.encode() if token else _key_from_data_dir(data_dir)
        return cls(hmac.new(secret, b"wanx-mcp video links v1", hashlib.sha256).digest())

    def _signature(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None) -> str:
        """``path`` with its expiry and signature as the query string."""
        expires = int((time.time() if now is None else now) + self.ttl)
        return f"{path}?exp={expires}&sig={self._signature(path, expires)}"

    def verify(self, path: str, expires: str | None, signature: str | None) -> bool:
        """Whether ``signature`` is this deployment's for ``path`` and ``expires`` is still ahead."""
        if not expires or not signature or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(path, int(expires)), signature)

    def attach(self, task: Task, base_url: str) -> Task:
        """``task`` with ``video_link`` (and ``preview_link``) under ``base_url`` when its files are saved."""
        links = {
            field: base_url.rstrip("/") + self.sign(f"/videos/{task.task_id}{kind}")
            for field, kind in (("video_link", ".mp4"), ("preview_link", ".preview.jpg"))
            if file_for(task, kind)
        }
        return task.model_copy(update=links) if links else task
