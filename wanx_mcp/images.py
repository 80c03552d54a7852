"""Turn the ``image`` argument into DashScope's ``img_url``, enforcing the documented limits before sending.

Accepted: http(s) and ``oss://`` URLs (passed through, never downloaded), ``data:image/...;base64`` URIs,
``file://`` URIs and local paths under the allowed folders. Local files and data URIs are checked with
Pillow (format, transparency, size in pixels and bytes, integrity) and sent as base64 data URIs;
``fit=True`` repairs what can be repaired (resize, flatten, convert, re-encode) and lists each change.
"""

from __future__ import annotations

import binascii
import ctypes
import functools
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import anyio
from PIL import Image, UnidentifiedImageError

from .catalog import ImageLimits
from .errors import InvalidInput

Image.preinit()  # the common formats' plugins (about 15 ms of imports) load with the module, not in the first call

MAX_URL_CHARS = 2048
#: Images with more pixels (and more than ``max_side`` squared) are refused before any pixel is decoded.
MAX_DECODE_PIXELS = 8000 * 8000
#: Pixels all decodes of this process may hold in memory at once (about 4 bytes each, plus the decoder's
#: own). Checking an image holds its pixel count, fitting one twice that (decoded pixels and the result):
#: one image at the decode limit at a time (about 500 MB), or several smaller ones.
PIXEL_BUDGET = 3 * MAX_DECODE_PIXELS // 2
#: With fit, files and data URIs up to this many times ``max_bytes`` are read (to be re-encoded smaller).
FIT_INPUT_FACTOR = 4
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp"}
#: Formats refused as they are but converted to PNG by fit (Pillow decodes them without external helpers).
CONVERTIBLE_FORMATS = ("GIF", "TIFF")
#: URL path endings that cannot be an accepted image (anything else, or none, is left to DashScope).
NON_IMAGE_EXTENSIONS = frozenset({
    ".gif", ".svg", ".svgz", ".tif", ".tiff", ".ico", ".heic", ".heif", ".avif", ".psd", ".eps", ".ai",
    ".raw", ".cr2", ".nef", ".dng", ".pdf", ".txt", ".md", ".htm", ".html", ".xml", ".json", ".csv", ".js",
    ".css", ".zip", ".gz", ".tar", ".7z", ".rar", ".exe", ".bin", ".doc", ".docx", ".xls", ".xlsx", ".ppt",
    ".pptx", ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mp3", ".wav", ".flac",
    ".ogg", ".m4a", ".aac",
})  # fmt: skip
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
                 "image/x-ms-bmp": "image/bmp", "image/x-bmp": "image/bmp"}  # fmt: skip
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_JPEG_QUALITIES = (90, 80, 70, 60)
_BASE64_CHUNK = 3 * 256 * 1024  # a multiple of 3, so the encoded pieces join into one valid base64 text


@dataclass(frozen=True)
class PreparedImage:
    """What goes into ``img_url``, with a loggable description (never the base64) and what fit changed."""

    img_url: str
    source: str  # "url" | "data_uri" | "file"
    description: str
    format: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Probe:
    """What inspecting the bytes found."""

    format: str
    width: int
    height: int
    transparent: bool


def prepare_image(
    image: str, limits: ImageLimits, *, allowed_dirs: Sequence[Path], fit: bool = False
) -> PreparedImage:
    """Check ``image`` (URL, data URI, file:// URI or path) against ``limits``, or raise InvalidInput.

    Local files must lie under ``allowed_dirs`` with no hidden component. With ``fit``, fixable problems
    (pixel size, transparency, GIF/TIFF format, byte size) are repaired and listed in ``changes``.
    """
    text = image.strip()
    if not text:
        raise _invalid(image, "must not be empty")
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme in ("http", "https", "oss"):
        return _from_url(text, limits)
    if scheme == "data":
        return _from_data_uri(text, limits, fit)
    if scheme == "file":
        return _from_file(text, _file_uri_path(text), limits, allowed_dirs, fit)
    if scheme:
        raise _invalid(
            text,
            f"unsupported URL scheme {scheme!r}: use an http(s) or oss:// URL, a data:image/...;base64 URI, "
            "a file:// URI or a local path (write ./name for a file whose name contains ':')",
        )
    return _from_file(text, text, limits, allowed_dirs, fit)


_PREPARING = anyio.CapacityLimiter(4)


class PixelBudget:
    """How many pixels the decodes of this process hold at once; a decode waits until its share is free."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._free = threading.Condition()
        self._tuned = False

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most the whole budget, so that any one image can go) while the block runs."""
        if not self._tuned:
            self._tuned = True
            _return_large_frees()
        share = min(pixels, self.limit)
        with self._free:
            self._free.wait_for(lambda: self.held + share <= self.limit)
            self.held += share
        try:
            yield
        finally:
            with self._free:
                self.held -= share
                self._free.notify_all()


def _return_large_frees() -> None:
    """Have glibc's malloc map every block of 1 MB or more on its own, so that the memory of a freed image goes
    back to the system at once. By default the threshold rises to the largest block freed so far, after which
    decoded images land in per-thread heaps that keep their peak size: 1.7 GB retained after seven big fits.
    Elsewhere (macOS, musl) this does nothing."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
DECODES = PixelBudget(PIXEL_BUDGET)


async def prepare_image_async(
    image: str, limits: ImageLimits, *, allowed_dirs: Sequence[Path], fit: bool = False
) -> PreparedImage:
    """``prepare_image`` in a worker thread (it reads files and decodes images), a few at a time so that
    a burst of large images cannot exhaust memory."""
    call = functools.partial(prepare_image, image, limits, allowed_dirs=allowed_dirs, fit=fit)
    return await anyio.to_thread.run_sync(call, limiter=_PREPARING)


# --- URLs ----------------------------------------------------------------------------------------------


def _from_url(url: str, limits: ImageLimits) -> PreparedImage:
    if len(url) > MAX_URL_CHARS:
        raise _invalid(url, f"URL is {len(url)} characters long; at most {MAX_URL_CHARS} are accepted")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise _invalid(url, "URL contains spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise _invalid(url, f"is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise _invalid(url, "URL has no host")
    if parts.username is not None or parts.password is not None:
        redacted = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
        raise _invalid(redacted, "URL must not contain credentials (user:password@); use a public URL")
    extension = PurePosixPath(unquote(parts.path)).suffix.lower()
    if extension in NON_IMAGE_EXTENSIONS:
        rule = f"URL points to a {extension} file, which is not an accepted image format"
        raise _invalid(url, rule, valid=limits.formats)
    shown = parts._replace(query="", fragment="").geturl() + ("?…" if parts.query else "")
    return PreparedImage(img_url=url, source="url", description=_shorten(shown, 200))


# --- data URIs -----------------------------------------------------------------------------------------


def _from_data_uri(text: str, limits: ImageLimits, fit: bool) -> PreparedImage:
    shown = _shorten(text, 48)
    cap = _input_cap(limits, fit)
    if len(text) > cap * 4 // 3 + cap // 50 + 1024:  # the base64 of `cap` bytes, line breaks and the header
        raise _too_big(shown, len(text) * 3 // 4, limits, f"data URI of {len(text)} characters: ")
    comma = text.find(",", 0, 256)
    params = text[5 : max(comma, 5)].lower().split(";")
    if not params[0].startswith("image/") or comma < 0:
        rule = "data URI must look like data:image/<type>;base64,<data>"
        raise _invalid(shown, rule, valid=MIME_TYPES.values())
    if params[-1] != "base64":
        raise _invalid(shown, "data URI must be base64-encoded (data:image/<type>;base64,<data>)")
    return _prepare_bytes(
        functools.partial(_decode_base64, text, comma + 1, shown),
        limits,
        fit,
        source="data_uri",
        label="data URI",
        shown=shown,
        claimed_mime=_MIME_ALIASES.get(params[0], params[0]),
    )


def _decode_base64(text: str, start: int, shown: str) -> bytes:
    payload = text[start:]
    try:
        try:
            data = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:
            stripped = "".join(payload.split())  # base64 wrapped over lines is fine
            if stripped == payload:
                raise
            data = binascii.a2b_base64(stripped, strict_mode=True)
    except ValueError as exc:
        raise _invalid(shown, f"data URI has invalid or truncated base64 ({exc})") from None
    if not data:
        raise _invalid(shown, "data URI holds no data")
    return data


# --- local files ---------------------------------------------------------------------------------------


def _file_uri_path(uri: str) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed "[" in the host
        raise _invalid(uri, f"is not a valid file:// URI ({exc})") from None
    if parts.netloc not in ("", "localhost"):
        host = _shorten(parts.netloc, 100)
        raise _invalid(uri, f"file:// URI names another host ({host}); only local files can be read")
    if parts.query or parts.fragment:
        raise _invalid(uri, "file:// URI must not have a query or fragment (write '?' as %3F and '#' as %23)")
    return unquote(parts.path)


def _from_file(
    shown: str, path: str, limits: ImageLimits, allowed_dirs: Sequence[Path], fit: bool
) -> PreparedImage:
    if "\0" in path:
        raise _invalid(shown, "path contains a NUL character")
    try:
        given = Path(path).expanduser()
    except RuntimeError as exc:  # "~" without a home directory
        raise _invalid(shown, f"cannot expand the path ({exc})") from None
    real = _locate(shown, Path.cwd() / given, allowed_dirs)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise _invalid(shown, "no such file") from None
    except OSError as exc:
        raise _invalid(shown, f"cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _invalid(shown, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _invalid(shown, "is not a regular file (a device, FIFO or socket)")
    if info.st_size == 0:
        raise _invalid(shown, "is empty (0 bytes), or a special file that reports no size")
    _check_byte_size(shown, info.st_size, limits, fit)
    return _prepare_bytes(
        functools.partial(_read, real, min(info.st_size, _input_cap(limits, fit)), shown, limits, fit),
        limits,
        fit,
        source="file",
        label=f"file {_shorten(shown, 200)}",
        shown=shown,
    )


def _locate(shown: str, given: Path, allowed_dirs: Sequence[Path]) -> Path:
    """The real path of ``given`` if it lies under an allowed folder with no hidden part (existing or not)."""
    roots = [Path(d).expanduser().absolute() for d in allowed_dirs]
    real_roots = [root.resolve() for root in roots]
    prefixes = [r for r in roots + real_roots if given.parts[: len(r.parts)] == r.parts]
    hidden = _hidden(given.parts[max((len(r.parts) for r in prefixes), default=0) :])
    if hidden:
        raise _invalid(shown, f"path has a hidden component ({hidden}); hidden files and folders are refused")
    try:
        real = given.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise _invalid(shown, f"cannot be resolved ({exc})") from None
    inside = [real.relative_to(r).parts for r in real_roots if real.is_relative_to(r)]
    if not inside:
        rule = "is outside the allowed folders (set WANX_ALLOWED_DIRS to allow another folder)"
        raise _invalid(shown, rule, valid=roots)
    if all(_hidden(parts) for parts in inside):
        rule = f"resolves to a hidden file or folder ({_hidden(inside[0])}); these are refused"
        raise _invalid(shown, rule)
    return real


def _hidden(parts: Sequence[str]) -> str | None:
    return next((p for p in parts if p.startswith(".") and p not in (".", "..")), None)


def _read(real: Path, expected: int, shown: str, limits: ImageLimits, fit: bool) -> bytes:
    """At most ``expected + 1`` bytes of regular file ``real`` (opened non-blocking, not following links)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        with open(os.open(real, flags | getattr(os, "O_BINARY", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _invalid(shown, "is not a regular file")
            data = f.read(expected + 1)
    except OSError as exc:
        raise _invalid(shown, f"cannot be read ({exc.strerror or exc})") from None
    _check_byte_size(shown, len(data), limits, fit)  # it may have grown since stat
    return data


def _input_cap(limits: ImageLimits, fit: bool) -> int:
    """How many bytes are read: ``max_bytes``, or more with fit (which can re-encode them smaller)."""
    return limits.max_bytes * (FIT_INPUT_FACTOR if fit else 1)


def _check_byte_size(shown: str, size: int, limits: ImageLimits, fit: bool) -> None:
    if size > _input_cap(limits, fit):
        raise _too_big(shown, size, limits)


def _too_big(shown: str, size: int, limits: ImageLimits, what: str = "") -> InvalidInput:
    fit_cap = _input_cap(limits, fit=True)
    rule = f"{what}is {size:,} bytes ({_size(size)}), over the {_size(limits.max_bytes)} limit of this model"
    if size <= fit_cap:
        return _invalid(shown, rule, fixed_by="fit_image")
    return _invalid(shown, f"{rule} (fit_image re-encodes images up to {_size(fit_cap)})")


# --- checking and fitting the bytes --------------------------------------------------------------------


def _prepare_bytes(
    load: Callable[[], bytes],
    limits: ImageLimits,
    fit: bool,
    *,
    source: str,
    label: str,
    shown: str,
    claimed_mime: str | None = None,
) -> PreparedImage:
    """Check (and with ``fit`` repair) the bytes from ``load`` and embed them as a data URI.

    The bytes are loaded here so this frame holds the only reference and can free them before the final
    string is built: peak memory stays near twice their base64 (about 2.7x the file).
    """
    data = load()
    _check_byte_size(shown, len(data), limits, fit)
    probe = _inspect(data, limits, shown)
    problems, fixable = _problems(probe, len(data), limits)
    valid = limits.formats if probe.format not in limits.formats else None
    if problems and not (fit and fixable):
        raise _invalid(shown, "; ".join(problems), valid=valid, fixed_by="fit_image" if fixable else None)
    changes: list[str] = []
    if problems:
        data, probe, changes = _fit(data, probe, limits, shown)
    elif claimed_mime and claimed_mime != MIME_TYPES[probe.format]:
        changes.append(f"relabelled the data URI from {claimed_mime} to {MIME_TYPES[probe.format]} (content)")
    size = len(data)
    encoded = _base64_after(f"data:{MIME_TYPES[probe.format]};base64,".encode(), data)
    del data
    img_url = encoded.decode("ascii")
    del encoded
    fitted = "fitted: " if problems else ""
    return PreparedImage(
        img_url=img_url,
        source=source,
        description=f"{label} ({fitted}{probe.format} {probe.width}x{probe.height}, {_size(size)})",
        format=probe.format,
        width=probe.width,
        height=probe.height,
        size_bytes=size,
        changes=tuple(changes),
    )


def _base64_after(prefix: bytes, data: bytes) -> bytearray:
    """``prefix`` then the base64 of ``data``, encoded piecewise into one buffer (no full-size temporary)."""
    encoded = bytearray(len(prefix) + (len(data) + 2) // 3 * 4)
    encoded[: len(prefix)] = prefix
    view = memoryview(data)
    position = len(prefix)
    for start in range(0, len(data), _BASE64_CHUNK):
        piece = binascii.b2a_base64(view[start : start + _BASE64_CHUNK], newline=False)
        encoded[position : position + len(piece)] = piece
        position += len(piece)
    return encoded


def _inspect(data: bytes, limits: ImageLimits, shown: str) -> _Probe:
    """Format, size and transparency, with cheap integrity checks.

    Pixels are decoded only for BMP, GIF and TIFF, and for PNG or WEBP with an alpha channel; formats Pillow
    would need external helpers for are identified but never decoded.
    """
    try:
        with Image.open(BytesIO(data)) as img:
            fmt = "JPEG" if img.format == "MPO" else str(img.format)
            width, height = img.size
            if width * height > max(MAX_DECODE_PIXELS, limits.max_side**2):
                raise _invalid(
                    shown,
                    f"is {width}x{height} ({width * height / 1e6:.0f} megapixels): images over "
                    f"{MAX_DECODE_PIXELS // 1_000_000} megapixels are refused unread "
                    "(decompression-bomb guard)",
                )
            may_be_transparent = img.has_transparency_data
            transparent = False
            if fmt == "PNG":
                img.verify()  # chunk CRCs and the IEND marker, without decompressing
            elif fmt == "JPEG":
                if data.rfind(b"\xff\xd9", img.fp.tell()) < 0:
                    raise _invalid(shown, "is a truncated JPEG (no end-of-image marker)")
            elif fmt == "BMP" or fmt in CONVERTIBLE_FORMATS or (fmt == "WEBP" and may_be_transparent):
                with DECODES.hold(width * height):
                    img.load()  # (opening a WEBP already parsed its whole container)
                    transparent = _transparent(img)
                    img.close()  # frees the pixels before the budget is given back
        if fmt == "PNG" and may_be_transparent:
            with DECODES.hold(width * height), Image.open(BytesIO(data)) as img:
                img.load()
                transparent = _transparent(img)
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise _invalid(shown, f"has too many pixels to decode (decompression-bomb guard: {exc})") from None
    except UnidentifiedImageError:
        raise _invalid(shown, "is not an image (Pillow cannot identify it)", valid=limits.formats) from None
    except Exception as exc:  # Pillow reports damage with many exception types
        raise _invalid(shown, f"is a corrupt or truncated image ({exc})") from None
    return _Probe(fmt, width, height, transparent)


def _transparent(img: Image.Image) -> bool:
    """Whether any pixel of the (loaded) image is not fully opaque (no copy of it made when it has alpha)."""
    if not img.has_transparency_data:
        return False
    if "A" not in img.getbands():
        img = img.convert("RGBA")
    extrema = img.getextrema()
    low = extrema[img.getbands().index("A")][0]  # type: ignore[index]
    return bool(low < 255)


def _problems(probe: _Probe, size: int, limits: ImageLimits) -> tuple[list[str], bool]:
    """What breaks ``limits``, and whether fit can repair all of it."""
    problems: list[str] = []
    fixable = True
    if probe.format not in limits.formats:
        fixable = probe.format in CONVERTIBLE_FORMATS
        converts = " (fit converts it to PNG)" if fixable else ""
        problems.append(f"format {probe.format} is not accepted{converts}")
    if probe.transparent:
        problems.append("has transparent pixels, which DashScope does not accept")
    w, h = probe.width, probe.height
    if min(w, h) < limits.min_side or max(w, h) > limits.max_side:
        problems.append(f"is {w}x{h}; width and height must be {limits.min_side} to {limits.max_side} pixels")
        if max(w, h) / min(w, h) > limits.max_side / limits.min_side:
            fixable = False
            problems.append(f"its aspect ratio ({w}:{h}) is too extreme for any resize to fit")
    if size > limits.max_bytes:
        problems.append(f"is {_size(size)}, over the {_size(limits.max_bytes)} limit of this model")
    return problems, fixable


def _target_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int] | None:
    """The size (same aspect) that puts both sides within limits, or None when they already are."""
    if min(width, height) >= limits.min_side and max(width, height) <= limits.max_side:
        return None
    if max(width, height) > limits.max_side:
        scale = limits.max_side / max(width, height)
    else:
        scale = limits.min_side / min(width, height)
    new_width, new_height = (
        min(limits.max_side, max(limits.min_side, round(side * scale))) for side in (width, height)
    )
    return new_width, new_height


def _fit(data: bytes, probe: _Probe, limits: ImageLimits, shown: str) -> tuple[bytes, _Probe, list[str]]:
    """Repair what ``_problems`` found (holding the decode budget for the image and its repaired copy)."""
    target = _target_size(probe.width, probe.height, limits)
    try:
        img = Image.open(BytesIO(data))
        if probe.format == "JPEG" and target and target[0] < probe.width:
            img.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
    except Exception as exc:
        raise _invalid(shown, f"is a corrupt or truncated image ({exc})") from None
    with DECODES.hold(2 * img.width * img.height), img:  # the pixels are freed before the budget is given back
        return _repair(img, data, probe, target, limits, shown)


def _repair(
    img: Image.Image, data: bytes, probe: _Probe, target: tuple[int, int] | None, limits: ImageLimits, shown: str
) -> tuple[bytes, _Probe, list[str]]:
    """Convert, flatten, resize, then re-encode smaller if still too big; at most one full-size copy at a time."""
    try:
        img.load()
    except Exception as exc:
        raise _invalid(shown, f"is a corrupt or truncated image ({exc})") from None
    saved = {key: img.info[key] for key in ("exif", "icc_profile") if img.info.get(key)}
    if img.mode not in ("L", "RGB", "RGBA", "P", "PA"):
        saved.pop("icc_profile", None)  # a CMYK or grey profile would not match the RGB result
    changes: list[str] = []
    if probe.format not in limits.formats:
        changes.append(f"converted {probe.format} to PNG")
    if probe.transparent:
        changes.append("flattened transparency onto white")
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img)  # its own alpha as the mask: no separate copy of the channel
        img = flat
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if target:
        verb = "downscaled" if target[0] < probe.width else "upscaled"
        changes.append(f"{verb} {probe.width}x{probe.height} -> {target[0]}x{target[1]}")
        img = img.resize(target, Image.Resampling.LANCZOS)
    fmt = probe.format
    qualities = _JPEG_QUALITIES
    if changes:
        fmt = "JPEG" if probe.format == "JPEG" else "PNG"
        data = _save(img, fmt, saved, qualities[0])
        qualities = qualities[1:] if fmt == "JPEG" else qualities
    if len(data) > limits.max_bytes:
        data, img, note = _shrink(img, saved, len(data), qualities, limits, shown)
        fmt = "JPEG"
        changes.append(note)
    return data, _Probe(fmt, img.width, img.height, False), changes


def _shrink(
    img: Image.Image,
    saved: dict[str, bytes],
    before: int,
    qualities: Sequence[int],
    limits: ImageLimits,
    shown: str,
) -> tuple[bytes, Image.Image, str]:
    """JPEG at decreasing ``qualities``, then smaller (not below min_side), until it fits ``max_bytes``."""
    goal = f"to fit {_size(limits.max_bytes)}"
    for quality in qualities:
        data = _save(img, "JPEG", saved, quality)
        if len(data) <= limits.max_bytes:
            note = f"re-encoded as JPEG quality {quality} {goal} ({_size(before)} -> {_size(len(data))})"
            return data, img, note
    quality = _JPEG_QUALITIES[-1]
    width, height = img.size
    while len(data) > limits.max_bytes:
        scale = 0.9 * (limits.max_bytes / len(data)) ** 0.5
        size = (round(img.width * scale), round(img.height * scale))
        if min(size) < limits.min_side:
            rule = f"cannot get under {_size(limits.max_bytes)} without going below {limits.min_side} px"
            raise _invalid(shown, rule)
        img = img.resize(size, Image.Resampling.LANCZOS)
        data = _save(img, "JPEG", saved, quality)
    note = (
        f"downscaled {width}x{height} -> {img.width}x{img.height} and re-encoded as JPEG quality {quality} "
        f"{goal} ({_size(before)} -> {_size(len(data))})"
    )
    return data, img, note


def _save(img: Image.Image, fmt: str, saved: dict[str, bytes], quality: int) -> bytes:
    out = BytesIO()
    img.save(out, fmt, **saved, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


# --- small helpers -------------------------------------------------------------------------------------


def _invalid(
    shown: str, rule: str, valid: Iterable[object] | None = None, fixed_by: str | None = None
) -> InvalidInput:
    return InvalidInput("image", shown, rule, valid=valid, fixed_by=fixed_by)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{max(1, round(size / 1024))} KB"
    return f"{size / 2**20:.2f}".rstrip("0").rstrip(".") + " MB"
