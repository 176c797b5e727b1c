"""A video job's frames: which ones the model reads, decoded from the stored clip with PyAV.

By default the clip is cut into `num_frames` equal segments and the middle frame of each is
read (InternVL's own recipe). With `fps`, a frame is read every 1/fps seconds from the start,
unless that makes more than `num_frames`: then the segments again, `num_frames` of them. The
frames are RGB pictures; the preparer tiles them like images (`max_tiles` each).

`prepare_video` does a video job's whole preparation (sampling, decoding, the prompt, the
frames' pixels and ids) where the worker prepares its jobs: a prepare process, or a task thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.prompts import build_conversation
from core.video import DEMUXERS, container_format
from worker.preparer import JobInputs, Preparer

if TYPE_CHECKING:
    import av.container


class VideoUndecodable(ValueError):
    """A job's clip could not be decoded (its frames not read)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)  # in args: the error crosses processes pickled
        self.reason = reason


@dataclass
class VideoInputs:
    """A video job prepared: the frames read, the prompt's image order, its inputs."""

    frames: list[int]
    order: list[int]
    inputs: JobInputs


@dataclass(frozen=True)
class ClipStats:
    """What sampling needs to know about a clip: its frames, and their rate."""

    frame_count: int
    rate: float  # frames per second


def even_indices(frame_count: int, num_frames: int) -> list[int]:
    """The middle frame of each of `num_frames` equal segments (every frame if fewer)."""
    count = min(num_frames, frame_count)
    segment = frame_count / count if count else 0.0
    return [int(segment * (i + 0.5)) for i in range(count)]


def fps_indices(stats: ClipStats, *, fps: float, num_frames: int) -> list[int]:
    """A frame every 1/fps seconds from the start; evenly spread if more than num_frames."""
    if stats.frame_count < 1:
        return []
    duration = stats.frame_count / stats.rate if stats.rate > 0 else 0.0
    count = max(1, math.floor(duration * fps + 1e-9))
    if count > num_frames:
        return even_indices(stats.frame_count, num_frames)
    step = stats.rate / fps
    picked = [min(stats.frame_count - 1, round(k * step)) for k in range(count)]
    return list(dict.fromkeys(picked))


def sample_indices(stats: ClipStats, *, num_frames: int, fps: float | None) -> list[int]:
    """The frame indices (in decoding order) a video job reads."""
    if fps is None:
        return even_indices(stats.frame_count, num_frames)
    return fps_indices(stats, fps=fps, num_frames=num_frames)


def _open(data: bytes) -> av.container.InputContainer:
    import av  # PyAV (FFmpeg) loads on the first clip a worker decodes

    fmt = container_format(data)
    if fmt is None:
        raise ValueError("the stored video is not in an accepted container")
    return av.open(io.BytesIO(data), mode="r", format=DEMUXERS[fmt], metadata_errors="ignore")


def clip_stats(data: bytes) -> ClipStats:
    """Count the clip's frames by reading its packets (no decoding), and its frame rate."""
    with _open(data) as box:
        stream = box.streams.video[0]
        count = sum(1 for packet in box.demux(stream) if packet.size)
        rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
    return ClipStats(count, rate)


def decode_frames(data: bytes, indices: list[int]) -> list[Image.Image]:
    """The frames at these decoding-order indices, as RGB pictures, in the indices' order."""
    wanted = set(indices)
    found: dict[int, Image.Image] = {}
    last = max(indices, default=-1)
    with _open(data) as box:
        stream = box.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(box.decode(stream)):
            if index in wanted:
                found[index] = frame.to_image()
            if index >= last:
                break
    missing = wanted - found.keys()
    if missing:
        raise ValueError(f"the video has no frame {min(missing)}")
    return [found[i] for i in indices]


def sample_frames(
    data: bytes, *, num_frames: int, fps: float | None
) -> tuple[list[int], list[Image.Image]]:
    """The indices a video job reads and those frames."""
    indices = sample_indices(clip_stats(data), num_frames=num_frames, fps=fps)
    if not indices:
        raise ValueError("the video has no frames")
    return indices, decode_frames(data, indices)


def prepare_video(
    preparer: Preparer,
    spec: dict[str, Any],
    control_tokens: list[str],
    data: bytes,
    *,
    max_tiles: int,
    on_device: bool,
) -> VideoInputs:
    """A video job's frames sampled and decoded, its prompt rendered, its inputs prepared."""
    video = spec["video"]
    try:
        indices, pictures = sample_frames(
            data, num_frames=int(video["num_frames"]), fps=video.get("fps")
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the clip is unusable
        raise VideoUndecodable(str(exc)) from None
    conversation = build_conversation(spec, control_tokens=control_tokens, frames=len(indices))
    inputs = preparer.job_inputs(
        conversation, list(pictures), max_tiles=max_tiles, on_device=on_device
    )
    return VideoInputs(indices, conversation.image_order, inputs)
