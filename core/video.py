"""Video checks done before anything is stored: the container's structure, then a cheap probe.

A clip is accepted only when its bytes start like an accepted container (MP4/MOV, Matroska/
WebM, AVI), its top-level structure covers the file exactly (no bytes hidden after it, nothing
cut off), the container's own demuxer (chosen from those bytes, never probed) reads it, it has
one or more video streams in an accepted codec, and its duration, frame size, frame count and
stream count fit the limits. The first frame is decoded.
Frames are decoded and sampled in the worker; this module never reads past the first frame.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidVideo
from core.storage import sha256_hex

CONTENT_TYPES = {
    "MP4": "video/mp4",
    "MOV": "video/quicktime",
    "WEBM": "video/webm",
    "MKV": "video/x-matroska",
    "AVI": "video/x-msvideo",
}
VIDEO_FORMATS = frozenset(CONTENT_TYPES)
# The FFmpeg demuxer each container family is read with (never left to FFmpeg's probing,
# which would also accept playlists and other formats that open further URLs or files).
DEMUXERS = {"MP4": "mov", "MOV": "mov", "WEBM": "matroska", "MKV": "matroska", "AVI": "avi"}
ACCEPTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MATROSKA_SEGMENT = b"\x18\x53\x80\x67"


@dataclass(frozen=True)
class VideoLimits:
    """The caps a clip must fit."""

    max_bytes: int
    max_duration_s: float
    max_frame_pixels: int
    max_frames: int
    max_streams: int


@dataclass(frozen=True)
class VideoInfo:
    """What the service knows about an accepted clip."""

    sha256: str
    format: str
    width: int
    height: int
    byte_size: int
    duration_s: float
    frame_count: int
    codec: str

    @property
    def content_type(self) -> str:
        """The MIME type matching the detected container."""
        return CONTENT_TYPES[self.format]


def is_video_format(fmt: str) -> bool:
    """Whether a stored object's format is a video container (else it is an image)."""
    return fmt in VIDEO_FORMATS


def container_format(data: bytes) -> str | None:
    """The container the bytes start as (MP4, MOV, WEBM, MKV, AVI), or None."""
    if data[4:8] == b"ftyp":
        return "MOV" if data[8:12] == b"qt  " else "MP4"
    if data.startswith(EBML_MAGIC):
        return "WEBM" if b"\x42\x82\x84webm" in data[:64] else "MKV"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "AVI"
    return None


def inspect_video(data: bytes, *, limits: VideoLimits) -> VideoInfo:
    """Check a clip cheaply but completely enough to store it, and describe it."""
    if not data:
        raise InvalidVideo("the video is empty", code="empty_video")
    if len(data) > limits.max_bytes:
        raise InvalidVideo(
            f"the video has {len(data)} bytes; the limit is {limits.max_bytes}",
            code="video_too_large",
        )
    fmt = container_format(data)
    if fmt is None:
        raise InvalidVideo(
            "the video is not in an accepted container; send MP4, MOV, WebM, Matroska or AVI",
            code="unsupported_video_format",
        )
    _check_structure(data, fmt)
    import av  # PyAV (FFmpeg) loads on the first clip: a service sent only pictures never needs it

    try:
        with av.open(io.BytesIO(data), format=DEMUXERS[fmt], metadata_errors="ignore") as box:
            return _probe(box, data, fmt, limits)
    except av.FFmpegError as exc:
        raise InvalidVideo(f"the video is corrupt: {exc}", code="invalid_video") from exc


def _probe(box: Any, data: bytes, fmt: str, limits: VideoLimits) -> VideoInfo:
    streams = list(box.streams)
    if len(streams) > limits.max_streams:
        raise InvalidVideo(
            f"the video has {len(streams)} streams; the limit is {limits.max_streams}",
            code="too_many_streams",
        )
    if not box.streams.video:
        raise InvalidVideo("the file has no video stream", code="no_video_stream")
    stream = box.streams.video[0]
    codec = stream.codec_context.name
    if codec not in ACCEPTED_CODECS:
        raise InvalidVideo(
            f"the video's codec {codec!r} is not accepted; use one of "
            f"{', '.join(sorted(ACCEPTED_CODECS))}",
            code="unsupported_video_codec",
        )
    width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    if width < 1 or height < 1:
        raise InvalidVideo("the video stream has no frame size", code="invalid_video")
    if width * height > limits.max_frame_pixels:
        raise InvalidVideo(
            f"the video's frames are {width}x{height}; the limit is "
            f"{limits.max_frame_pixels} pixels",
            code="video_frame_too_large",
        )
    duration = _duration_s(box, stream)
    if duration > limits.max_duration_s:
        raise InvalidVideo(
            f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:g} s",
            code="video_too_long",
        )
    declared = int(stream.frames or 0)
    estimate = declared or math.ceil(duration * float(stream.average_rate or stream.base_rate or 0))
    if estimate > limits.max_frames:
        raise InvalidVideo(
            f"the video has about {estimate} frames; the limit is {limits.max_frames}",
            code="video_too_many_frames",
        )
    _check_first_frame(box, stream)
    return VideoInfo(
        sha256_hex(data), fmt, width, height, len(data), round(duration, 3), estimate, codec
    )


def _duration_s(box: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif box.duration is not None:
        import av  # loaded already: the box was opened with it

        duration = box.duration / av.time_base
    else:
        duration = 0.0
    if not duration > 0 or math.isinf(duration):
        raise InvalidVideo("the video declares no duration", code="invalid_video")
    return duration


def _check_first_frame(box: Any, stream: Any) -> None:
    stream.thread_type = "NONE"
    if next(iter(box.decode(stream)), None) is None:
        raise InvalidVideo("the video stream has no frame that decodes", code="invalid_video")


# -- the container's own structure --------------------------------------------------------


def _check_structure(data: bytes, fmt: str) -> None:
    """Top-level boxes / elements / chunks must cover the file: nothing cut off, nothing after."""
    end = {
        "MP4": _mp4_end,
        "MOV": _mp4_end,
        "WEBM": _matroska_end,
        "MKV": _matroska_end,
        "AVI": _riff_end,
    }[fmt](data)
    if end > len(data):
        raise InvalidVideo(
            f"the video is truncated: its container declares {end} bytes, the file has {len(data)}",
            code="invalid_video",
        )
    if end < len(data):
        raise InvalidVideo(
            f"the video has {len(data) - end} bytes after the end of its container",
            code="invalid_video",
        )


def _mp4_boxes(data: bytes) -> Iterator[tuple[bytes, int]]:
    position = 0
    while position + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if size == 1 and position + 16 <= len(data):
            size = struct.unpack(">Q", data[position + 8 : position + 16])[0]
        elif size == 0:
            size = len(data) - position
        if size < 8 or not kind.isascii() or not kind.decode("ascii").isprintable():
            raise InvalidVideo("the video's MP4 boxes are corrupt", code="invalid_video")
        yield kind, position + size
        position += size
    if 0 < len(data) - position < 8:
        yield b"", position + 8  # a box header cut off: the file is truncated


def _mp4_end(data: bytes) -> int:
    end = 0
    kinds: list[bytes] = []
    for kind, box_end in _mp4_boxes(data):
        kinds.append(kind)
        end = box_end
    if b"moov" not in kinds:
        raise InvalidVideo("the MP4 video has no movie header (moov)", code="invalid_video")
    return end


def _vint(data: bytes, position: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length integer at position: (value, next position, all ones)."""
    if position >= len(data) or data[position] == 0:
        raise InvalidVideo("the video's Matroska header is corrupt", code="invalid_video")
    first = data[position]
    length = 8 - first.bit_length() + 1
    raw = data[position : position + length]
    if len(raw) < length:
        raise InvalidVideo("the video is truncated inside its header", code="invalid_video")
    value = int.from_bytes(raw, "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    unknown = value == (1 << (7 * length)) - 1
    return value, position + length, unknown


def _matroska_end(data: bytes) -> int:
    # EBML header, then one Segment whose size (unless streamed: unknown) ends the file.
    _, position, _ = _vint(data, 0, keep_marker=True)
    size, position, _ = _vint(data, position, keep_marker=False)
    position += size
    segment_id, after_id, _ = _vint(data, position, keep_marker=True)
    if data[position:after_id] != MATROSKA_SEGMENT:
        raise InvalidVideo(
            "the Matroska file has no segment after its header", code="invalid_video"
        )
    size, start, unknown = _vint(data, after_id, keep_marker=False)
    return len(data) if unknown else start + size


def _riff_end(data: bytes) -> int:
    # One RIFF AVI chunk, then any number of RIFF AVIX chunks (OpenDML, over 1 GiB).
    position = 0
    while position + 8 <= len(data):
        if data[position : position + 4] != b"RIFF":
            raise InvalidVideo(
                "the AVI file has data outside its RIFF chunks", code="invalid_video"
            )
        size = struct.unpack("<I", data[position + 4 : position + 8])[0]
        position += 8 + size + (size & 1)
    return position if position >= len(data) else position + 8
