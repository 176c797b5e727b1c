"""A corpus of hostile image files, generated here (no binary fixtures): bombs, lies, wrecks."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, *, bit_depth: int = 1, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_bomb(side: int = 20_000) -> bytes:
    """A 1-bit PNG of side x side pixels whose zeros compress a thousandfold (~50 KB)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)  # filter byte + packed pixels
    parts = [compressor.compress(row * 500) for _ in range(side // 500)]
    return _png(side, side, b"".join(parts) + compressor.flush())


def png_huge_header() -> bytes:
    """A PNG claiming 100000 x 100000 pixels in a file of a few dozen bytes."""
    return _png(100_000, 100_000, zlib.compress(b"\0" * 16))


def png_text_bomb() -> bytes:
    """A small, valid-looking PNG whose zTXt chunk inflates to 64 MB."""
    compressor = zlib.compressobj(9)
    text = compressor.compress(b"A" * (64 << 20)) + compressor.flush()
    pixels = zlib.compress(b"\0\0")
    return _png(8, 1, pixels, extra=_chunk(b"zTXt", b"comment\0\0" + text))


def jpeg_huge_header() -> bytes:
    """A tiny JPEG whose frame header is rewritten to 65000 x 65000."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), (10, 200, 10)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def gif_huge_screen() -> bytes:
    """A GIF whose screen and frame say 65535 x 65535."""
    data = bytearray(_encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    frame = data.index(b"\x2c")  # image descriptor: left, top, width, height
    data[frame + 5 : frame + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def bmp_huge_header() -> bytes:
    """A BMP header claiming 50000 x 50000 pixels, with almost no pixel data."""
    data = bytearray(_encode(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", 50_000, 50_000)
    return bytes(data)


def tiff_huge_header() -> bytes:
    """A TIFF whose width and length tags say 60000 x 60000."""
    data = bytearray(_encode(Image.new("L", (3, 3)), "TIFF"))
    count = struct.unpack("<H", data[8:10])[0]
    for entry in range(count):
        at = 10 + entry * 12
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            packed = struct.pack("<H", 60000) + b"\0\0" if kind == 3 else struct.pack("<I", 60000)
            data[at + 8 : at + 12] = packed
    return bytes(data)


def noisy(fmt: str, size: tuple[int, int] = (256, 256)) -> bytes:
    """A photo-like image that does not compress away."""
    return _encode(Image.effect_noise(size, 60).convert("RGB"), fmt)


def truncated(fmt: str) -> bytes:
    """The first 60% of an image file."""
    data = noisy(fmt)
    return data[: len(data) * 6 // 10]


def png_bad_crc() -> bytes:
    """A PNG whose pixel data fails its checksum."""
    data = bytearray(noisy("PNG", (32, 32)))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    return bytes(data)


def png_then_zip() -> bytes:
    """A PNG/ZIP polyglot: a real PNG followed by an archive (the payload rides after IEND)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("payload.sh", "#!/bin/sh\necho owned\n")
    return noisy("PNG", (16, 16)) + archive.getvalue()


def zip_with_png() -> bytes:
    """A ZIP archive holding a PNG."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("cat.png", noisy("PNG", (16, 16)))
    return archive.getvalue()


def pdf_with_jpeg() -> bytes:
    """A PDF wrapper around a JPEG stream."""
    jpeg = noisy("JPEG", (16, 16))
    return b"%PDF-1.4\n1 0 obj<</Type/XObject/Subtype/Image>>stream\n" + jpeg + b"\nendstream"


def html_then_png() -> bytes:
    """Script first, image after: an HTML/PNG polyglot."""
    return b"<html><script>alert(document.cookie)</script></html>" + noisy("PNG", (8, 8))


def svg_with_script() -> bytes:
    """An SVG (XML) image with a script: not a raster format the service reads."""
    return (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
    )


def png_signature_then_garbage() -> bytes:
    """The PNG magic number followed by random bytes."""
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def other_format(fmt: str) -> bytes:
    """A valid image in a format the service does not accept (ICO, PPM, TGA, PCX, ...)."""
    return _encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)


# (name, bytes, expected status, expected code)
CORPUS: list[tuple[str, bytes, int, str]] = [
    ("zero bytes", b"", 422, "empty_image"),
    ("png bomb 20000x20000", png_bomb(), 413, "image_too_many_pixels"),
    ("png header 100000x100000", png_huge_header(), 413, "image_too_many_pixels"),
    ("jpeg header 65000x65000", jpeg_huge_header(), 413, "image_too_many_pixels"),
    ("gif screen 65535x65535", gif_huge_screen(), 413, "image_too_many_pixels"),
    ("bmp header 50000x50000", bmp_huge_header(), 413, "image_too_many_pixels"),
    ("tiff header 60000x60000", tiff_huge_header(), 413, "image_too_many_pixels"),
    ("png zTXt bomb", png_text_bomb(), 422, "invalid_image"),
    ("truncated png", truncated("PNG"), 422, "invalid_image"),
    ("truncated jpeg", truncated("JPEG"), 422, "invalid_image"),
    ("truncated webp", truncated("WEBP"), 422, "invalid_image"),
    ("truncated gif", truncated("GIF"), 422, "invalid_image"),
    ("png with a bad checksum", png_bad_crc(), 422, "invalid_image"),
    ("png + zip polyglot", png_then_zip(), 422, "invalid_image"),
    ("png magic then garbage", png_signature_then_garbage(), 422, "invalid_image"),
    ("zip holding a png", zip_with_png(), 415, "unsupported_image_format"),
    ("pdf around a jpeg", pdf_with_jpeg(), 415, "unsupported_image_format"),
    ("html + png polyglot", html_then_png(), 415, "unsupported_image_format"),
    ("svg with a script", svg_with_script(), 415, "unsupported_image_format"),
    ("ico", other_format("ICO"), 415, "unsupported_image_format"),
    ("ppm", other_format("PPM"), 415, "unsupported_image_format"),
    ("tga", other_format("TGA"), 415, "unsupported_image_format"),
    ("pcx", other_format("PCX"), 415, "unsupported_image_format"),
]
