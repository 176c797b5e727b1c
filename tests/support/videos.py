"""Small clips the tests make with PyAV (no downloads), and hostile video files made from them.

A clip shows a coloured square moving left to right over a background whose grey level encodes
the frame number (frame i: level 8 + 4 * i, for the first 60 frames), so a decoded frame tells
which frame it is.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# Container -> (PyAV format name, a codec it carries here).
CONTAINERS = {
    "mp4": ("mp4", "mpeg4"),
    "mov": ("mov", "mpeg4"),
    "webm": ("webm", "libvpx"),
    "mkv": ("matroska", "mpeg4"),
    "avi": ("avi", "mpeg4"),
}
SQUARE = (220, 30, 30)


def frame_level(index: int) -> int:
    """The background grey of frame `index` (repeating every 60 frames)."""
    return 8 + 4 * (index % 60)


def frame_pixels(index: int, count: int, size: tuple[int, int]) -> np.ndarray:
    """Frame `index` of `count`: a grey background and a red square further right each frame."""
    width, height = size
    side = max(4, height // 3)
    pixels = np.full((height, width, 3), frame_level(index), dtype=np.uint8)
    x = round(index * (width - side) / max(1, count - 1))
    top = (height - side) // 2
    pixels[top : top + side, x : x + side] = SQUARE
    return pixels


def make_clip(
    container: str = "mp4",
    *,
    seconds: float = 2.0,
    fps: int = 24,
    size: tuple[int, int] = (64, 48),
    codec: str | None = None,
    audio: bool = False,
    extra_video_streams: int = 0,
) -> bytes:
    """A clip of seconds x fps frames of the moving square."""
    fmt, default_codec = CONTAINERS[container]
    count = round(seconds * fps)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as out:
        streams = []
        for _ in range(1 + extra_video_streams):
            stream = out.add_stream(codec or default_codec, rate=fps)
            stream.width, stream.height = size
            stream.pix_fmt = "yuvj420p" if (codec or default_codec) == "mjpeg" else "yuv420p"
            streams.append(stream)
        sound = out.add_stream("aac", rate=8000) if audio else None
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index, count, size), format="rgb24")
            for stream in streams:
                out.mux(stream.encode(frame))
        for stream in streams:
            out.mux(stream.encode())
        if sound is not None:
            _add_silence(out, sound, seconds)
    return buffer.getvalue()


def clip_of(pictures: list[Image.Image], container: str = "mp4", *, fps: int = 4) -> bytes:
    """A clip whose frames are these pictures, in order."""
    fmt, codec = CONTAINERS[container]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = pictures[0].size
        stream.pix_fmt = "yuv420p"
        for picture in pictures:
            out.mux(stream.encode(av.VideoFrame.from_image(picture.convert("RGB"))))
        out.mux(stream.encode())
    return buffer.getvalue()


def _add_silence(out: av.container.OutputContainer, sound: av.AudioStream, seconds: float) -> None:
    samples = 1024
    for block in range(int(seconds * 8000 / samples)):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        frame.pts = block * samples
        frame.time_base = Fraction(1, 8000)
        out.mux(sound.encode(frame))
    out.mux(sound.encode())


def decoded_level(image: Image.Image) -> int:
    """The background grey of a decoded frame (its top-left corner)."""
    return int(np.asarray(image.convert("L"))[0:4, 0:4].mean().round())


# -- hostile files ---------------------------------------------------------------------------


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first part of a clip, as an interrupted upload leaves it."""
    return data[: int(len(data) * keep)]


def audio_only_mp4() -> bytes:
    """An MP4 with an audio stream and no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        _add_silence(out, out.add_stream("aac", rate=8000), 1.0)
    return buffer.getvalue()


def mp4_box(kind: bytes, payload: bytes) -> bytes:
    """One MP4 box."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def with_frame_count(data: bytes, frames: int) -> bytes:
    """An MP4 whose sample table claims `frames` frames in one run (stts rewritten)."""
    position = data.index(b"stts")
    # stts: version+flags (4), entry count (4), then (sample count, sample delta) entries.
    patched = bytearray(data)
    patched[position + 12 : position + 16] = struct.pack(">I", frames)
    return bytes(patched)


def jpeg_with_clip(clip: bytes) -> bytes:
    """A JPEG with a clip appended (a polyglot: an image viewer and some demuxers each read
    one part)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue() + clip


def clip_with_zip(clip: bytes) -> bytes:
    """A clip with a ZIP archive after its last box."""
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.sh", "echo hi\n")
    return clip + archive.getvalue()


def mp4_header_on_matroska(mkv: bytes) -> bytes:
    """A Matroska file behind an MP4 `ftyp` box: the first bytes say MP4, the rest does not."""
    return mp4_box(b"ftyp", b"isom\0\0\x02\0isomiso2mp41") + mkv
