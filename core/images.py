"""Image checks done before anything is stored, and decoding to the RGB the model reads."""

from __future__ import annotations

import io
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


def inspect_image(data: bytes, *, limits: ImageLimits, index: int = 0) -> ImageInfo:
    """Check an upload completely (format, size, pixels, full decode) and describe it."""
    where = f"image {index}"
    if not data:
        raise InvalidImage(f"{where} is empty", code="empty_image")
    if len(data) > limits.max_bytes:
        raise InvalidImage(
            f"{where} has {len(data)} bytes; the limit is {limits.max_bytes}",
            code="image_too_large",
            status=413,
        )
    image = _open(data, where)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"{where} has no pixels", code="invalid_image")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"{where} is {width}x{height} pixels; the limit is {limits.max_pixels} pixels",
            code="image_too_many_pixels",
            status=413,
        )
    _decode_fully(image, where)
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    return ImageInfo(sha256_hex(data), fmt, width, height, len(data))


def _open(data: bytes, where: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        pass
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{where} is corrupt: {exc}", code="invalid_image") from exc
    if _opens_as_other_format(data):
        raise InvalidImage(
            f"{where} is in a format the service does not accept; "
            "send JPEG, PNG, WEBP, GIF, BMP or TIFF",
            code="unsupported_image_format",
            status=415,
        )
    raise InvalidImage(
        f"{where} is not a readable image (JPEG, PNG, WEBP, GIF, BMP or TIFF)",
        code="unsupported_image_format",
        status=415,
    )


def _opens_as_other_format(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any failure means "not another known format"
        return False
    return True


def _decode_fully(image: Image.Image, where: str) -> None:
    # Decompression bombs and truncated files only show when the pixels are decoded.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"{where} is truncated or corrupt: {exc}", code="invalid_image") from exc


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
