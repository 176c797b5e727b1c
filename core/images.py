"""Image checks done before anything is stored, and decoding to the RGB the model reads."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import InvalidImage
from core.storage import sha256_hex

# Formats decided from the bytes, never from a file name or a declared content type.
# (Multi-picture JPEGs open through the JPEG plugin and report "MPO".)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# Truncated files are errors, not images with a grey bottom.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow only warns between its pixel limit and twice that: a bomb must be an error.
warnings.simplefilter("error", Image.DecompressionBombWarning)
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transposed or turned a quarter
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ACCEPTED_SIGNATURES = (
    PNG_SIGNATURE,
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


@dataclass(frozen=True)
class ImageLimits:
    """The caps an image must fit."""

    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class ImageInfo:
    """What the service knows about an accepted image."""

    sha256: str
    format: str
    width: int
    height: int
    byte_size: int

    @property
    def content_type(self) -> str:
        """The MIME type matching the detected format."""
        return CONTENT_TYPES[self.format]


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow itself refuse images over max_pixels (its bomb check, raised as an error)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def inspect_image(data: bytes, *, limits: ImageLimits, index: int = 0) -> ImageInfo:
    """Check an upload completely (format, size, pixels, every byte decoded) and describe it.

    Width and height are as displayed, after EXIF orientation, since that is what the model sees.
    """
    where = f"image {index}"
    if not data:
        raise InvalidImage(f"{where} is empty", code="empty_image")
    if len(data) > limits.max_bytes:
        raise InvalidImage(
            f"{where} has {len(data)} bytes; the limit is {limits.max_bytes}",
            code="image_too_large",
        )
    image = _open(data, where, limits.max_pixels)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"{where} has no pixels", code="invalid_image")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(where, f"{width}x{height} pixels", limits.max_pixels)
    _decode_fully(image, where)
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    if fmt == "PNG":
        _check_png_ends(data, where)
    if image.getexif().get(EXIF_ORIENTATION) in ROTATED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(sha256_hex(data), fmt, width, height, len(data))


def _too_many_pixels(where: str, size: str, max_pixels: int) -> InvalidImage:
    return InvalidImage(
        f"{where} is {size}; the limit is {max_pixels} pixels",
        code="image_too_many_pixels",
    )


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(where, "a decompression bomb", max_pixels) from exc
    except UnidentifiedImageError:
        if _claims_accepted_format(data):
            raise InvalidImage(
                f"{where} starts like an accepted format but is corrupt", code="invalid_image"
            ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"{where} is corrupt: {exc}", code="invalid_image") from exc
    raise InvalidImage(
        f"{where} is not an image in an accepted format; send JPEG, PNG, WEBP, GIF, BMP or TIFF",
        code="unsupported_image_format",
    )


def _claims_accepted_format(data: bytes) -> bool:
    # A broken file of an accepted format is corrupt (422), not of another format (415).
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(ACCEPTED_SIGNATURES)


def _decode_fully(image: Image.Image, where: str) -> None:
    # Truncated files and compressed-chunk bombs only show when the pixels are decoded. A JPEG
    # is decoded at 1/8 scale (libjpeg's DCT scaling): every entropy-coded byte is still read,
    # so truncation and corrupt data fail the same way, at about half the CPU of a full decode.
    # (Its size is read before: drafting changes what `image.size` reports.)
    if image.format in ("JPEG", "MPO"):
        image.draft(None, (1, 1))
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"{where} is truncated or corrupt: {exc}", code="invalid_image") from exc


def _check_png_ends(data: bytes, where: str) -> None:
    # Bytes after IEND are how PNG polyglots (PNG + ZIP, PNG + script) carry their payload.
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        position += 12 + length
        if kind == b"IEND":
            break
    if position != len(data):
        raise InvalidImage(
            f"{where} has {len(data) - position} bytes after the end of the PNG image",
            code="invalid_image",
        )


def load_rgb(data: bytes) -> Image.Image:
    """Decode stored bytes to an upright 8-bit RGB image (EXIF orientation applied)."""
    with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
        image.seek(0)  # the first frame of an animation
        upright = ImageOps.exif_transpose(image) or image
        return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB: transparency onto white, 16-bit scaled, CMYK and palettes mapped."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _wide_to_rgb(image)
    if image.mode == "F":
        return image.convert("L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's I;16 -> L conversion clips at 255 instead of scaling: scale 16-bit to 8-bit.
    wide = image.convert("I")
    extrema = wide.getextrema()
    high = extrema[1] if isinstance(extrema, tuple) else extrema
    if image.mode == "I" and isinstance(high, int | float) and high <= 255:
        return wide.convert("L").convert("RGB")
    return wide.point(lambda value: value / 257).convert("L").convert("RGB")
