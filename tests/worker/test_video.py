"""A video job's frames: which are sampled, that they decode to the right pictures, and the
prompt InternVL's video recipe writes for them."""

from __future__ import annotations

from typing import Any

import pytest

from core.prompts import build_conversation
from core.specs import GenerationParams
from tests.support.videos import decoded_level, frame_level, make_clip, truncated
from worker.video import ClipStats, clip_stats, decode_frames, sample_frames, sample_indices


def test_even_sampling_takes_the_middle_frame_of_each_segment() -> None:
    stats = ClipStats(frame_count=48, rate=24.0)
    assert sample_indices(stats, num_frames=8, fps=None) == [3, 9, 15, 21, 27, 33, 39, 45]
    assert sample_indices(stats, num_frames=1, fps=None) == [24]
    assert sample_indices(stats, num_frames=3, fps=None) == [8, 24, 40]


def test_a_short_clip_gives_every_frame_once() -> None:
    assert sample_indices(ClipStats(5, 24.0), num_frames=8, fps=None) == [0, 1, 2, 3, 4]
    assert sample_indices(ClipStats(0, 24.0), num_frames=8, fps=None) == []


def test_fps_sampling_reads_a_frame_every_one_over_fps_seconds() -> None:
    stats = ClipStats(frame_count=48, rate=24.0)  # 2 s
    assert sample_indices(stats, num_frames=8, fps=2.0) == [0, 12, 24, 36]
    assert sample_indices(stats, num_frames=8, fps=1.0) == [0, 24]
    assert sample_indices(stats, num_frames=8, fps=0.1) == [0]  # at least one frame


def test_fps_sampling_is_capped_by_num_frames() -> None:
    stats = ClipStats(frame_count=48, rate=24.0)
    # 24 fps would be 48 frames: over num_frames, the clip is spread evenly instead.
    assert sample_indices(stats, num_frames=4, fps=24.0) == [6, 18, 30, 42]


@pytest.mark.parametrize("container", ["mp4", "webm", "mkv", "avi"])
def test_frames_decode_to_the_pictures_at_those_indices(container: str) -> None:
    clip = make_clip(container, seconds=2.0, fps=24)
    assert clip_stats(clip).frame_count == 48
    frames = decode_frames(clip, [45, 3, 24])
    assert [f.size for f in frames] == [(64, 48)] * 3
    assert all(f.mode == "RGB" for f in frames)
    levels = [decoded_level(f) for f in frames]
    assert levels == pytest.approx([frame_level(i) for i in (45, 3, 24)], abs=6)


def test_sample_frames_by_fps_on_a_clip() -> None:
    indices, frames = sample_frames(make_clip("mp4", seconds=2.0, fps=10), num_frames=8, fps=2.0)
    assert indices == [0, 5, 10, 15]
    assert len(frames) == 4


def test_an_undecodable_clip_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017,PT011 - any decoder error; the worker maps it
        sample_frames(truncated(make_clip("mp4")), num_frames=4, fps=None)


def test_the_prompt_follows_internvls_video_recipe(engine: Any) -> None:
    spec = {"task": "video", "images": [], "question": "Where does the square go?"}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens, frames=3)
    text = engine.processor.apply_chat_template(
        conversation.messages, add_generation_prompt=True, tokenize=False
    )
    image = engine.processor.image_token
    recipe = "".join(f"Frame{i}: {image}\n" for i in (1, 2, 3)) + "Where does the square go?"
    assert text == f"<|im_start|>user\n{recipe}<|im_end|>\n<|im_start|>assistant\n"
    assert conversation.image_order == [0, 1, 2]


def test_the_default_instruction_describes_the_video(engine: Any) -> None:
    conversation = build_conversation(
        {"task": "video", "images": []}, control_tokens=engine.control_tokens, frames=1
    )
    assert conversation.messages[0]["content"][-1]["text"] == "Describe this video in detail."


def test_frames_become_one_tile_each_in_the_prepared_job(engine: Any) -> None:
    _, frames = sample_frames(make_clip("mp4", size=(128, 64)), num_frames=5, fps=None)
    spec = {"task": "video", "images": [], "prompt": "Describe."}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens, frames=5)
    prepared = engine.prepare("v", conversation, frames, GenerationParams(max_tiles=1))
    assert prepared.image_tiles == [1] * 5
    assert engine.tiles_per_image(prepared.input_ids) == [1] * 5
    two = engine.prepare("v", conversation, frames, GenerationParams(max_tiles=2))
    assert two.image_tiles == [3] * 5  # 128x64 frames: a 2x1 grid and its thumbnail
