"""wanx_mcp.images: turning the image argument into img_url, with the documented limits enforced first."""

from __future__ import annotations

import base64
import os
import random
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import anyio
import pytest
from PIL import Image

from wanx_mcp import images
from wanx_mcp.catalog import ImageLimits
from wanx_mcp.errors import InvalidInput
from wanx_mcp.images import MAX_URL_CHARS, PreparedImage, prepare_image, prepare_image_async

LIMITS = ImageLimits()
MIMES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp"}
VALID = "JPEG, PNG, BMP, WEBP"
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "GIF": "gif", "TIFF": "tif"}


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    rng = random.Random(0)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * len(mode)))


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def image_file(folder: Path, fmt: str = "PNG", size: tuple[int, int] = (320, 240), mode: str = "RGB",
               name: str | None = None, **params: object) -> Path:  # fmt: skip
    img = Image.new(mode, size, "red" if mode in ("RGB", "RGBA") else 128)
    return write(folder, name or f"img.{EXTENSIONS[fmt]}", encode(img, fmt, **params))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def prepare(image: str, root: Path, *, limits: ImageLimits = LIMITS, fit: bool = False) -> PreparedImage:
    return prepare_image(image, limits, allowed_dirs=[root], fit=fit)


def refused(image: str, root: Path, *fragments: str, limits: ImageLimits = LIMITS, fit: bool = False) -> str:
    """The InvalidInput message for ``image``, checked to contain every fragment."""
    with pytest.raises(InvalidInput) as caught:
        prepare(image, root, limits=limits, fit=fit)
    message = str(caught.value)
    assert caught.value.argument == "image"
    for fragment in fragments:
        assert fragment in message
    return message


def decoded(prepared: PreparedImage) -> bytes:
    return base64.b64decode(prepared.img_url.split(",", 1)[1], validate=True)


def pixels(prepared: PreparedImage) -> Image.Image:
    img = Image.open(BytesIO(decoded(prepared)))
    img.load()
    return img


# --- accepted formats and forms ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
@pytest.mark.parametrize("form", ["path", "file_uri", "data_uri"])
def test_accepted_formats_pass_unchanged(tmp_path: Path, fmt: str, form: str) -> None:
    path = image_file(tmp_path, fmt, name=f"my image.{EXTENSIONS[fmt]}")
    data = path.read_bytes()
    argument = {"path": str(path), "file_uri": path.as_uri(), "data_uri": data_uri(data, MIMES[fmt])}[form]
    prepared = prepare(argument, tmp_path)
    assert prepared.img_url.startswith(f"data:{MIMES[fmt]};base64,")
    assert decoded(prepared) == data  # never re-encoded when nothing needs fixing
    assert (prepared.format, prepared.width, prepared.height) == (fmt, 320, 240)
    assert prepared.size_bytes == len(data)
    assert prepared.source == ("data_uri" if form == "data_uri" else "file")
    assert prepared.changes == ()
    assert f"({fmt} 320x240, " in prepared.description
    assert "base64" not in prepared.description
    if form == "path":
        assert prepared.description.startswith(f"file {path} (")


def test_home_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_file(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert prepare("~/img.png", tmp_path).width == 320
    assert prepare("img.png", tmp_path).width == 320
    assert prepare("  ./img.png\n", tmp_path).width == 320


def test_file_uri_with_localhost_and_percent_encoding(tmp_path: Path) -> None:
    path = image_file(tmp_path, name="a b#c.png")
    assert prepare(f"file://localhost{path.as_uri()[7:]}", tmp_path).format == "PNG"
    assert "%20" in path.as_uri()


def test_mpo_is_accepted_as_jpeg(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (320, 240), colour) for colour in ("red", "blue")]
    path = write(tmp_path, "photo.jpg", encode(frames[0], "MPO", save_all=True, append_images=frames[1:]))
    prepared = prepare(str(path), tmp_path)
    assert prepared.format == "JPEG" and prepared.img_url.startswith("data:image/jpeg;base64,")


def test_async_wrapper(tmp_path: Path) -> None:
    path = image_file(tmp_path)

    async def main() -> PreparedImage:
        return await prepare_image_async(str(path), LIMITS, allowed_dirs=[tmp_path])

    assert anyio.run(main).format == "PNG"


# --- URLs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.jpg",
        "http://example.com/photos/cat.PNG",
        "https://example.com/render?id=3",
        "https://example.com/image.php?id=3",
        "https://cdn.example.com/a.webp#top",
        "oss://dashscope-instant/abc/2025/a.png",
    ],
)
def test_urls_pass_through(tmp_path: Path, url: str) -> None:
    prepared = prepare(f" {url} ", tmp_path)
    assert prepared.img_url == url
    assert prepared.source == "url"
    assert prepared.format is None and prepared.size_bytes is None and prepared.changes == ()


def test_url_description_hides_the_query(tmp_path: Path) -> None:
    prepared = prepare("https://bucket.example.com/a.jpg?Expires=1&Signature=secret", tmp_path)
    assert prepared.description == "https://bucket.example.com/a.jpg?…"


@pytest.mark.parametrize("extension", ["gif", "svg", "pdf", "txt", "mp4", "TIFF"])
def test_url_with_non_image_extension_is_refused(tmp_path: Path, extension: str) -> None:
    url = f"https://example.com/files/x.{extension}?v=2"
    refused(url, tmp_path, f"points to a .{extension.lower()} file", "not an accepted image format", VALID)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://user:secret@example.com/a.png", "credentials"),
        ("https://token@example.com/a.png", "credentials"),
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("https:///a.png", "no host"),
        ("https://example.com:99999/a.png", "not a valid URL"),
        ("https://example.com/a b.png", "spaces or control characters"),
        ("https://example.com/" + "a" * MAX_URL_CHARS + ".png", f"at most {MAX_URL_CHARS}"),
    ],
)
def test_bad_urls_are_refused(tmp_path: Path, url: str, fragment: str) -> None:
    refused(url, tmp_path, fragment)


def test_credentials_are_not_repeated_in_the_error(tmp_path: Path) -> None:
    message = refused("https://user:hunter2@example.com/a.png", tmp_path, "https://***@example.com/a.png")
    assert "hunter2" not in message


def test_empty_argument(tmp_path: Path) -> None:
    refused("   ", tmp_path, "must not be empty")


# --- transparency ------------------------------------------------------------------------------------


def transparent_images() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (320, 240), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    la = Image.new("LA", (320, 240), (10, 255))
    la.putpixel((0, 0), (10, 0))
    palette = Image.new("P", (320, 240), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    return {"RGBA": rgba, "LA": la, "P+tRNS": palette}


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P+tRNS"])
def test_transparency_is_refused_then_flattened_by_fit(tmp_path: Path, kind: str) -> None:
    img = transparent_images()[kind]
    path = write(tmp_path, "t.png", encode(img, "PNG", **({"transparency": 0} if kind == "P+tRNS" else {})))
    refused(str(path), tmp_path, "transparent pixels", "fit_image=true")
    prepared = prepare(str(path), tmp_path, fit=True)
    assert prepared.changes == ("flattened transparency onto white",)
    assert prepared.format == "PNG" and prepared.description.startswith(f"file {path} (fitted: PNG 320x240")
    flat = pixels(prepared)
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)


def test_transparent_webp_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t.webp", encode(transparent_images()["RGBA"], "WEBP", lossless=True))
    refused(str(path), tmp_path, "transparent pixels")
    assert pixels(prepare(str(path), tmp_path, fit=True)).getpixel((0, 0)) == (255, 255, 255)


def test_opaque_alpha_channel_is_accepted(tmp_path: Path) -> None:
    path = image_file(tmp_path, mode="RGBA")
    prepared = prepare(str(path), tmp_path)
    assert prepared.changes == () and decoded(prepared) == path.read_bytes()


# --- pixel size --------------------------------------------------------------------------------------


def test_too_small_is_refused_then_upscaled(tmp_path: Path) -> None:
    path = image_file(tmp_path, "JPEG", size=(100, 50))
    refused(str(path), tmp_path, "is 100x50", "240 to 8000 pixels", "fit_image=true")
    prepared = prepare(str(path), tmp_path, fit=True)
    assert prepared.changes == ("upscaled 100x50 -> 480x240",)
    assert (prepared.format, prepared.width, prepared.height) == ("JPEG", 480, 240)
    assert pixels(prepared).size == (480, 240)


def test_too_large_is_refused_then_downscaled(tmp_path: Path) -> None:
    limits = ImageLimits(max_side=1000)
    path = image_file(tmp_path, "PNG", size=(1500, 500))
    refused(str(path), tmp_path, "is 1500x500", "240 to 1000 pixels", "fit_image=true", limits=limits)
    prepared = prepare(str(path), tmp_path, limits=limits, fit=True)
    assert prepared.changes == ("downscaled 1500x500 -> 1000x333",)
    assert pixels(prepared).size == (1000, 333)


def test_large_jpeg_is_downscaled_keeping_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when shown
    path = image_file(tmp_path, "JPEG", size=(2400, 1200), exif=exif.tobytes())
    prepared = prepare(str(path), tmp_path, limits=ImageLimits(max_side=1000), fit=True)
    assert prepared.changes == ("downscaled 2400x1200 -> 1000x500",)
    img = pixels(prepared)
    assert img.size == (1000, 500) and img.getexif()[0x0112] == 6


def test_extreme_aspect_ratio_cannot_be_fitted(tmp_path: Path) -> None:
    path = image_file(tmp_path, size=(2000, 20))
    message = refused(str(path), tmp_path, "is 2000x20", "aspect ratio (2000:20) is too extreme", fit=True)
    assert "fit_image=true" not in refused(str(path), tmp_path) and "fit_image=true" not in message


# --- byte size ---------------------------------------------------------------------------------------


def test_too_many_bytes_is_refused_then_reencoded(tmp_path: Path) -> None:
    limits = ImageLimits(max_bytes=100_000)
    path = write(tmp_path, "noise.png", encode(noise((300, 300)), "PNG"))
    size = path.stat().st_size
    refused(str(path), tmp_path, f"is {size:,} bytes", "over the 98 KB limit", "fit_image=true",
            limits=limits)  # fmt: skip
    prepared = prepare(str(path), tmp_path, limits=limits, fit=True)
    assert prepared.format == "JPEG" and prepared.size_bytes is not None and prepared.size_bytes <= 100_000
    assert len(prepared.changes) == 1 and prepared.changes[0].startswith("re-encoded as JPEG quality ")
    assert "to fit 98 KB" in prepared.changes[0]
    assert prepared.img_url.startswith("data:image/jpeg;base64,")


def test_too_many_bytes_downscales_when_quality_is_not_enough(tmp_path: Path) -> None:
    limits = ImageLimits(max_bytes=30_000, min_side=100)
    path = write(tmp_path, "noise.jpg", encode(noise((300, 300)), "JPEG", quality=95))
    prepared = prepare(str(path), tmp_path, limits=limits, fit=True)
    assert prepared.size_bytes is not None and prepared.size_bytes <= 30_000
    assert prepared.changes[0].startswith("downscaled 300x300 -> ")
    assert "re-encoded as JPEG quality 60 to fit 29 KB" in prepared.changes[0]
    assert prepared.width is not None and 100 <= prepared.width < 300
    refused(str(path), tmp_path, "without going below 240 px", limits=ImageLimits(max_bytes=30_000), fit=True)


def test_far_too_many_bytes_is_refused_even_with_fit(tmp_path: Path) -> None:
    path = write(tmp_path, "noise.png", encode(noise((300, 300)), "PNG"))
    refused(str(path), tmp_path, "over the 20 KB limit", "fit_image re-encodes images up to 78 KB",
            limits=ImageLimits(max_bytes=20_000), fit=True)  # fmt: skip


def test_huge_data_uri_is_refused_before_decoding(tmp_path: Path) -> None:
    text = "data:image/png;base64," + "A" * 20_000_000
    started = time.perf_counter()
    message = refused(text, tmp_path, "data URI of 20000022 characters", "over the 10 MB limit")
    assert time.perf_counter() - started < 0.5
    assert len(message) < 400


# --- not images, damaged images, other formats -------------------------------------------------------


def test_text_file_renamed_png(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.png", b"just some text, not a picture\n" * 10)
    refused(str(path), tmp_path, "is not an image")
    refused(str(path), tmp_path, "is not an image", fit=True)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_truncated_files(tmp_path: Path, fmt: str) -> None:
    data = encode(noise((320, 240)), fmt)
    path = write(tmp_path, f"cut.{EXTENSIONS[fmt]}", data[: len(data) * 2 // 3])
    refused(str(path), tmp_path, "truncated")
    refused(str(path), tmp_path, "truncated", fit=True)


def test_corrupt_png(tmp_path: Path) -> None:
    data = bytearray(encode(noise((320, 240)), "PNG"))
    data[len(data) // 2] ^= 0xFF
    refused(str(write(tmp_path, "bad.png", bytes(data))), tmp_path, "corrupt or truncated image", "checksum")


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_convertible_formats(tmp_path: Path, fmt: str) -> None:
    path = image_file(tmp_path, fmt)
    refused(str(path), tmp_path, f"format {fmt} is not accepted", "fit_image=true", f"valid: {VALID}")
    prepared = prepare(str(path), tmp_path, fit=True)
    assert prepared.changes == (f"converted {fmt} to PNG",)
    assert prepared.format == "PNG" and pixels(prepared).getpixel((5, 5)) == (255, 0, 0)


def test_transparent_gif_is_converted_and_flattened(tmp_path: Path) -> None:
    path = write(tmp_path, "t.gif", encode(transparent_images()["P+tRNS"], "GIF", transparency=0))
    refused(str(path), tmp_path, "format GIF is not accepted", "transparent pixels", "fit_image=true")
    prepared = prepare(str(path), tmp_path, fit=True)
    assert prepared.changes == ("converted GIF to PNG", "flattened transparency onto white")


def test_unconvertible_format(tmp_path: Path) -> None:
    path = write(tmp_path, "icon.ico", encode(Image.new("RGB", (64, 64)), "ICO"))
    message = refused(str(path), tmp_path, "format ICO is not accepted", f"valid: {VALID}", fit=True)
    assert "fit_image=true" not in message


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("side", [9000, 100_000])
def test_decompression_bomb(tmp_path: Path, side: int) -> None:
    data = png_header_only(side, side)
    assert len(data) < 100
    path = write(tmp_path, "bomb.png", data)
    refused(str(path), tmp_path, "decompression-bomb guard", fit=True)
    refused(data_uri(data, "image/png"), tmp_path, "decompression-bomb guard")


# --- data URIs ---------------------------------------------------------------------------------------


def test_data_uri_with_lying_mime_is_relabelled(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (320, 240)), "PNG")
    prepared = prepare(data_uri(data, "image/jpeg"), tmp_path)
    assert prepared.img_url.startswith("data:image/png;base64,") and decoded(prepared) == data
    assert prepared.changes == ("relabelled the data URI from image/jpeg to image/png (content)",)
    assert prepare(data_uri(data, "image/PNG"), tmp_path).changes == ()


def test_data_uri_with_line_breaks(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (320, 240)), "JPEG")
    wrapped = base64.encodebytes(data).decode()
    assert "\n" in wrapped
    assert decoded(prepare(f"data:image/jpg;base64,{wrapped}", tmp_path)) == data


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("data:image/png;base64,iVBORw0KGgo#AAAA", "invalid or truncated base64"),
        ("data:image/png;base64,iVBORw0KG", "invalid or truncated base64"),
        ("data:image/png;base64,iVBORw0KGgoé", "invalid or truncated base64"),
        ("data:image/png;base64,", "holds no data"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:text/plain;base64,aGVsbG8=", "must look like data:image/<type>;base64,<data>"),
        ("data:image/png;base64", "must look like data:image/<type>;base64,<data>"),
        ("data:image/png;base64,aGVsbG8gd29ybGQh", "is not an image"),
    ],
)
def test_bad_data_uris(tmp_path: Path, text: str, fragment: str) -> None:
    refused(text, tmp_path, fragment)


def test_data_uri_with_truncated_image(tmp_path: Path) -> None:
    data = encode(noise((320, 240)), "PNG")
    payload = base64.b64encode(data[: len(data) // 2 // 3 * 3]).decode()
    refused(f"data:image/png;base64,{payload}", tmp_path, "corrupt or truncated image")


# --- where local files may come from -----------------------------------------------------------------


def test_outside_the_allowed_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = image_file(tmp_path / "other")
    refused(str(outside), root, "outside the allowed folders", str(root))
    refused(f"{root}/../other/img.png", root, "outside the allowed folders")
    refused(str(outside), tmp_path / "missing-root", "outside the allowed folders")


def test_nothing_is_allowed_without_allowed_folders(tmp_path: Path) -> None:
    path = image_file(tmp_path)
    with pytest.raises(InvalidInput, match="outside the allowed folders"):
        prepare_image(str(path), LIMITS, allowed_dirs=[])


def test_dot_dot_inside_the_root_is_fine(tmp_path: Path) -> None:
    image_file(tmp_path / "a")
    (tmp_path / "b").mkdir()
    assert prepare(f"{tmp_path}/b/../a/img.png", tmp_path).format == "PNG"


@pytest.mark.parametrize("relative", [".secret.png", ".cache/img.png", "sub/.git/img.png"])
def test_hidden_files_and_folders(tmp_path: Path, relative: str) -> None:
    path = tmp_path / relative
    image_file(path.parent, name=path.name)
    hidden = next(part for part in Path(relative).parts if part.startswith("."))
    refused(str(path), tmp_path, f"hidden component ({hidden})")


def test_hidden_allowed_root_itself_is_fine(tmp_path: Path) -> None:
    root = tmp_path / ".wanx"
    assert prepare(str(image_file(root)), root).format == "PNG"


def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside = image_file(root, name="real.png")
    outside = image_file(tmp_path / "other")
    hidden = image_file(root / ".private", name="secret.png")
    (root / "in.png").symlink_to(inside)
    (root / "out.png").symlink_to(outside)
    (root / "to-hidden.png").symlink_to(hidden)
    (root / "dir-link").symlink_to(tmp_path / "other")
    assert prepare(str(root / "in.png"), root).format == "PNG"
    refused(str(root / "out.png"), root, "outside the allowed folders")
    refused(str(root / "dir-link" / "img.png"), root, "outside the allowed folders")
    refused(str(root / "to-hidden.png"), root, "resolves to a hidden file or folder (.private)")


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    refused(str(tmp_path / "loop.png"), tmp_path, "cannot be resolved")


def test_directory_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    refused(str(tmp_path / "folder.png"), tmp_path, "is a directory")
    missing = tmp_path / "missing.png"
    message = refused(str(missing), tmp_path, "no such file")
    assert str(missing) in message
    refused(missing.as_uri(), tmp_path, "no such file", missing.as_uri())


def test_empty_file(tmp_path: Path) -> None:
    refused(str(write(tmp_path, "empty.png", b"")), tmp_path, "is empty")


def test_special_files(tmp_path: Path) -> None:
    refused("/proc/self/environ", tmp_path, "outside the allowed folders")
    refused("/proc/self/environ", Path("/proc"), "is empty (0 bytes), or a special file")
    refused("/dev/zero", Path("/dev"), "not a regular file")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    refused(str(fifo), tmp_path, "not a regular file")


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("file://otherhost/tmp/img.png", "names another host (otherhost)"),
        ("file:///tmp/img.png?x=1", "must not have a query or fragment"),
    ],
)
def test_bad_file_uris(tmp_path: Path, uri: str, fragment: str) -> None:
    refused(uri, tmp_path, fragment)


def test_nul_in_path(tmp_path: Path) -> None:
    refused(f"{tmp_path}/a\0.png", tmp_path, "NUL character")


# --- the decode budget -----------------------------------------------------------------------------------


def test_flattening_composites_onto_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (400, 300), (0, 0, 255, 0))  # fully transparent (blue underneath: must not show)
    img.paste((200, 20, 20, 255), (200, 0, 400, 300))  # opaque red right half
    img.paste((0, 0, 0, 128), (0, 0, 100, 300))  # half-transparent black stripe
    result = pixels(prepare(str(write(tmp_path, "a.png", encode(img, "PNG"))), tmp_path, fit=True))
    assert result.mode == "RGB"
    assert result.getpixel((150, 10)) == (255, 255, 255)
    assert result.getpixel((300, 10)) == (200, 20, 20)
    assert all(abs(c - 127) <= 1 for c in result.getpixel((50, 10)))  # type: ignore[union-attr]


def test_concurrent_decodes_share_one_pixel_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads fit 800x800 transparent images (640k pixels to check, twice that to fit) under a budget of
    one million pixels: what is held at any moment never exceeds it, and every image still comes out right."""
    budget = images.PixelBudget(1_000_000)
    monkeypatch.setattr(images, "DECODES", budget)
    img = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    img.paste((10, 200, 10, 255), (0, 0, 400, 800))
    paths = [write(tmp_path, f"t{n}.png", encode(img, "PNG")) for n in range(4)]
    held, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            held[0] = max(held[0], budget.held)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda p: prepare(str(p), tmp_path, fit=True), paths))
    finally:
        done.set()
        watcher.join()
    assert 0 < held[0] <= 1_000_000 and budget.held == 0
    assert all(pixels(r).getpixel((600, 10)) == (255, 255, 255) for r in results)
