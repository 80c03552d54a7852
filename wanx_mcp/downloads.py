"""Fetch a finished video from its OSS link: allowed hosts only, no private addresses, atomic writes inside
the videos folder that never overwrite a file, a few at a time, and only when the disk can hold them."""

from __future__ import annotations

import errno
import filecmp
import ipaddress
import os
import secrets
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import anyio
import httpx

from .errors import WanxError

MAX_REDIRECTS = 3
RETRY_STATUSES = frozenset({408, 425, 429})
WILDCARDS = frozenset("*?[")
FULL_DISK = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: Free space a download must leave on the disk, beyond the video itself.
DISK_MARGIN = 64 * 1024 * 1024
#: How long a download failing for want of disk space is retried before it is given up.
DISK_FULL_RETRY_SECONDS = 3600.0

Resolver = Callable[[str], Awaitable[list[str]]]
#: Checks a finished download (the temporary file) before it replaces ``dest``; raises ValueError to reject it.
Verifier = Callable[[Path], Awaitable[None]]


class DownloadError(WanxError):
    """A video download failed (``DownloadFailed``) or was refused by policy (``DownloadRefused``).

    ``url`` is the requested URL without its query string (which holds the signature). A ``retryable``
    failure may pass if tried again later; ``retry_for`` (seconds, None: until the link expires) bounds how
    long after its first occurrence that is worth doing.
    """

    code = "DownloadFailed"

    def __init__(
        self, url: str, reason: str, *, retryable: bool = False, refused: bool = False, retry_for: float | None = None
    ) -> None:
        self.code = "DownloadRefused" if refused else "DownloadFailed"
        self.url = redact(url)
        self.reason = reason
        self.retryable = retryable and not refused
        self.retry_for = retry_for if self.retryable else None
        super().__init__(f"{self.code}: {reason} ({self.url})")

    @property
    def retrying(self) -> str:
        """What retrying this failure means, for a task's notes."""
        if self.retry_for is None:
            return "retrying until the link expires"
        return f"retrying until the link expires, for at most {self.retry_for:g} s"


def redact(url: str) -> str:
    """``url`` without credentials, query (OSS puts its signature there) or fragment."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"


def host_allowed(url: str, patterns: Sequence[str]) -> bool:
    """Whether the host (and port) of ``url`` matches one of ``patterns``.

    Patterns are case-insensitive fnmatch-style hosts with an optional port: ``*.aliyuncs.com`` (any
    subdomain, not the bare domain), ``127.0.0.1``, ``localhost:8080``, ``[::1]:8080``.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return False
    return _match(parsed, _patterns(patterns)) is not None


async def download_video(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int = 512 * 1024 * 1024,
    timeout: float = 120.0,
    resolve: Resolver | None = None,
    folder: Path | None = None,
    slots: anyio.CapacityLimiter | None = None,
    verify: Verifier | None = None,
) -> int:
    """Download the MP4 at ``url`` to ``dest`` and return its size in bytes.

    Every hop (at most ``MAX_REDIRECTS`` redirects) must be http(s) without credentials on an allowed
    host, and a host allowed only by a wildcard pattern must resolve (``resolve``, default: the system
    resolver) to public addresses. ``dest`` must lie inside ``folder`` (when given; links resolved). The body
    streams into a temporary file beside ``dest`` that becomes ``dest`` only once complete and MP4-like (and
    accepted by ``verify``, whose ValueError is a retryable failure), so ``dest`` is never partial; an existing
    different file at ``dest`` is never overwritten. A download first waits for one of ``slots``, and is
    refused when the disk cannot hold the declared size plus ``DISK_MARGIN``. Every failure is a DownloadError.
    """
    dest = Path(dest)
    if folder is not None:
        _confine(url, dest, folder)
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    job = _Download(url, _patterns(allowed_hosts), resolve or _resolve_host, max_bytes, dest.parent)
    try:
        async with slots if slots is not None else nullcontext():
            with anyio.fail_after(timeout):
                first = await job.check(job.parse(url))
                with _disk_errors(url, dest.parent):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    out = await anyio.open_file(part, "xb")
                async with out:
                    size = await job.fetch(client, first, out)
                    with _disk_errors(url, part):
                        await out.flush()
                        await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
                if verify is not None:
                    try:
                        await verify(part)
                    except ValueError as exc:
                        raise job.fail(f"not a playable video: {exc}", retryable=True) from None
            with _disk_errors(url, dest):
                await anyio.to_thread.run_sync(_place, url, part, dest)
    except TimeoutError:
        raise DownloadError(url, f"not finished within {timeout:g} s", retryable=True) from None
    except httpx.HTTPError as exc:
        raise DownloadError(url, f"{type(exc).__name__}: {exc}", retryable=True) from None
    finally:
        with suppress(OSError):
            part.unlink(missing_ok=True)
    return size


def _confine(url: str, dest: Path, folder: Path) -> None:
    """Refuse a destination that is not a plain file name directly inside ``folder`` (links resolved)."""
    root = Path(folder).resolve()
    try:
        inside = dest.parent.resolve() == root and not dest.name.startswith(".") and not dest.is_symlink()
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise DownloadError(url, f"the destination {dest} is not inside the videos folder {root}", refused=True)


def _place(url: str, part: Path, dest: Path) -> None:
    """Give the complete ``part`` the name ``dest`` without ever replacing another file found there."""
    try:
        os.link(part, dest)  # fails if dest exists, where os.replace would overwrite it
        return
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in FULL_DISK or dest.exists():
            raise
        os.replace(part, dest)  # a file system without hard links; dest did not exist a moment ago
        return
    if dest.is_symlink() or not filecmp.cmp(part, dest, shallow=False):
        raise DownloadError(url, f"{dest} already exists and holds another file; it is not overwritten", refused=True)


@dataclass(frozen=True)
class _Download:
    """The rules of one download; ``url`` is the requested one, named in every error."""

    url: str
    patterns: tuple[str, ...]
    resolve: Resolver
    max_bytes: int
    folder: Path

    def fail(self, reason: str, *, retryable: bool = False) -> DownloadError:
        return DownloadError(self.url, reason, retryable=retryable)

    def refuse(self, reason: str) -> DownloadError:
        return DownloadError(self.url, reason, refused=True)

    def parse(self, url: str) -> httpx.URL:
        try:
            return httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise self.refuse("not a valid URL") from None

    async def fetch(self, client: httpx.AsyncClient, url: httpx.URL, out: anyio.AsyncFile[bytes]) -> int:
        """GET ``url``, following redirects by hand, and write the video into ``out``; returns its size."""
        redirects = 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            async with client.stream("GET", url, headers=headers, follow_redirects=False) as response:
                if not response.is_redirect:
                    return await self.save(response, out)
                location = response.headers["location"]
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise self.refuse(f"more than {MAX_REDIRECTS} redirects")
            try:
                target = url.join(location)
            except httpx.InvalidURL:
                raise self.refuse("redirect to an invalid URL") from None
            if url.scheme == "https" and target.scheme == "http":
                raise self.refuse(f"redirect from https to plain http ({redact(str(target))})")
            url = await self.check(target, via="redirect to ")

    async def check(self, url: httpx.URL, via: str = "") -> httpx.URL:
        """``url`` once it passes the scheme, credential, host and private-address rules."""
        host = _host(url)
        if url.scheme not in ("http", "https"):
            raise self.refuse(f"{via}{url.scheme or 'a'} URL: only http and https are allowed")
        if url.userinfo:
            raise self.refuse(f"{via}a URL with credentials")
        trust = _match(url, self.patterns)
        if trust is None:
            allowed = ", ".join(self.patterns) or "none"
            raise self.refuse(f"{via}host {host or '(none)'} is not an allowed download host ({allowed})")
        if trust == "exact":
            return url
        try:
            addresses = [host] if _is_ip(host) else await self.resolve(host)
        except OSError as exc:
            raise self.fail(f"{via}host {host} could not be resolved: {exc}", retryable=True) from None
        if not addresses:
            raise self.fail(f"{via}host {host} has no addresses", retryable=True)
        for address in addresses:
            if not _public(address):
                raise self.refuse(f"{via}host {host} is at non-public address {address}")
        return url

    async def save(self, response: httpx.Response, out: anyio.AsyncFile[bytes]) -> int:
        """Stream a final answer into ``out``, checking status, size and MP4 signature; returns the size."""
        self.check_status(response.status_code)
        declared = response.headers.get("content-length", "")
        length = int(declared) if declared.isascii() and declared.isdigit() else None
        if length is not None and length > self.max_bytes:
            raise self.refuse(f"the video is {length} bytes, over the limit of {self.max_bytes}")
        if length is not None:
            self.check_space(length)
        written = 0
        head = b""
        async for chunk in response.aiter_bytes():
            written += len(chunk)
            if written > self.max_bytes:
                raise self.refuse(f"the video is over the limit of {self.max_bytes} bytes")
            if len(head) < 8:
                head = (head + chunk)[:8]
                if len(head) == 8 and head[4:] != b"ftyp":
                    raise self.fail("the response is not an MP4 video (no ftyp box)")
            with _disk_errors(self.url, Path(out.wrapped.name)):
                await out.write(chunk)
        if length is not None and response.num_bytes_downloaded != length:
            got = response.num_bytes_downloaded
            raise self.fail(f"truncated: got {got} of {length} bytes", retryable=True)
        if len(head) < 8:
            raise self.fail(f"the response is not an MP4 video (only {written} bytes)")
        return written

    def check_space(self, length: int) -> None:
        """Refuse (for a while: space may be freed) a video the disk cannot hold with ``DISK_MARGIN`` to spare."""
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return  # the write itself reports what is wrong
        if length + DISK_MARGIN > free:
            raise DownloadError(
                self.url,
                f"disk full: the video is {length:,} bytes and {self.folder} has {free:,} bytes free "
                f"({DISK_MARGIN // 2**20} MB must stay free)",
                retryable=True, retry_for=DISK_FULL_RETRY_SECONDS,
            )  # fmt: skip

    def check_status(self, status: int) -> None:
        if status == 200:
            return
        if status == 403:
            reason = "the link has expired or its signature is no longer valid (HTTP 403)"
        elif status in (404, 410):
            reason = f"the video is no longer there; the link has probably expired (HTTP {status})"
        else:
            reason = f"the server answered HTTP {status}"
        raise self.fail(reason, retryable=status >= 500 or status in RETRY_STATUSES)


@contextmanager
def _disk_errors(url: str, path: Path) -> Iterator[None]:
    """Turn an OSError from the file system into a DownloadError naming ``path``."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in FULL_DISK
        what = "disk full" if full else f"cannot write ({exc.strerror or exc})"
        raise DownloadError(url, f"{what}: {path}", retryable=full, retry_for=DISK_FULL_RETRY_SECONDS) from exc


def _host(url: httpx.URL) -> str:
    """The host httpx connects to: IDNA-encoded, lower case, without a trailing dot."""
    return url.raw_host.decode("ascii").lower().rstrip(".")


def _match(url: httpx.URL, patterns: tuple[str, ...]) -> Literal["exact", "wildcard"] | None:
    """How ``url``'s host is allowed: by an exact pattern (trusted as configured), by a wildcard, or not."""
    host = _host(url)
    port = str(url.port or (443 if url.scheme == "https" else 80))
    found: Literal["wildcard"] | None = None
    for pattern in patterns if host else ():
        want_host, want_port = _split_pattern(pattern)
        if want_port is not None and not fnmatchcase(port, want_port):
            continue
        if WILDCARDS.isdisjoint(want_host):
            if _same_host(host, want_host):
                return "exact"
        elif fnmatchcase(host, want_host):
            found = "wildcard"
    return found


def _patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """``patterns`` as a tuple; a lone string is one pattern, not a sequence of one-character ones."""
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    """``host[:port]`` or ``[ipv6][:port]`` as (host, port or None), lower case; a bare IPv6 has no port."""
    text = pattern.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host.rstrip("."), port
    return text.rstrip("."), None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_host(host: str, pattern: str) -> bool:
    if host == pattern:
        return True
    return _is_ip(host) and _is_ip(pattern) and ipaddress.ip_address(host) == ipaddress.ip_address(pattern)


def _public(address: str) -> bool:
    """Whether ``address`` is public unicast (IPv4-mapped and 6to4 IPv6 are judged by their IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


async def _resolve_host(host: str) -> list[str]:
    """Every address the system resolver gives for ``host``."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
