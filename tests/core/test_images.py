"""Image checks: formats from the bytes, limits, corrupt files, and RGB conversion."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from api.problems import http_status
from core.errors import InvalidImage
from core.images import ImageLimits, inspect_image, load_rgb

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_formats_are_detected_from_bytes(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt)
    info = inspect_image(data, limits=LIMITS)
    assert (info.format, info.width, info.height, info.byte_size) == (fmt, 40, 30, len(data))


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(b"", limits=LIMITS)
    assert caught.value.code == "empty_image"


def test_text_is_not_an_image() -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(b"hello, this is not an image", limits=LIMITS)
    assert (caught.value.code, http_status(caught.value)) == ("unsupported_image_format", 415)


def test_other_image_formats_are_refused_with_415() -> None:
    data = encode(Image.new("RGB", (8, 8)), "ICO")
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data, limits=LIMITS)
    assert caught.value.code == "unsupported_image_format"


def test_truncated_png_is_invalid() -> None:
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG")
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data[: len(data) // 2], limits=LIMITS)
    assert caught.value.code == "invalid_image"


def test_too_many_bytes_is_413() -> None:
    data = encode(Image.new("RGB", (10, 10)), "PNG")
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data, limits=ImageLimits(max_bytes=len(data) - 1, max_pixels=10**6))
    assert (caught.value.code, http_status(caught.value)) == ("image_too_large", 413)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (2000, 1000)), "PNG")
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data, limits=ImageLimits(max_bytes=10**7, max_pixels=1_000_000))
    assert caught.value.code == "image_too_many_pixels"


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb = load_rgb(encode(image, "JPEG", exif=exif))
    assert rgb.size == (20, 40)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_rgb(encode(image, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_palette_and_cmyk_become_rgb() -> None:
    palette = Image.new("RGB", (4, 4), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert load_rgb(encode(palette, "PNG")).getpixel((0, 0)) == (0, 128, 0)
    assert load_rgb(encode(cmyk, "JPEG")).mode == "RGB"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (4, 4), 32768)
    assert load_rgb(encode(image, "PNG")).getpixel((0, 0)) == (127, 127, 127)
