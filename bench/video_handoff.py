"""`python -m bench.video_handoff`: what receiving a video job's frames costs the model's side.

A prepare pool (one process, InternVL3-1B's processor, frames kept as pictures the device
resizes) prepares the same clip of 640x480 frames again and again, `--frames` frames a job;
measured is the CPU of this process (the model's side: submitting the job, receiving its
frames, letting them go) per job, with the frames coming back in lent slots
(worker.prepare_slots) and as a shared tensor each (torch.multiprocessing: a file descriptor
and a handshake per tensor). Alternating rounds in one run; the prepare process's own CPU,
the same in both, is not counted.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import av
import numpy as np

from bench.photos import photo_jpeg
from bench.simulated import processor_checkpoint
from core.config import ModelSpec
from core.images import load_rgb
from worker.prepare_pool import PreparePool


def clip(frames: int, *, fps: int = 8) -> bytes:
    """An MP4 of `frames` different 640x480 photos, one after another."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for index in range(frames):
            pixels = np.asarray(load_rgb(photo_jpeg(640, 480, seed=index)))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def model_side_ms(pool: PreparePool, data: bytes, frames: int, jobs: int) -> float:
    """This process's CPU per video job (frames received, then let go)."""
    spec = {"task": "video", "images": [], "video": {"sha256": "clip", "num_frames": frames}}
    started = time.process_time()
    for _ in range(jobs):
        video = pool.run_video(spec, [], data, max_tiles=1, on_device=True)
        assert len(video.frames) == frames
        del video
    return 1000 * (time.process_time() - started) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=30, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", default=".bench/models")
    args = parser.parse_args()
    spec = ModelSpec(alias="bench", checkpoint=str(processor_checkpoint(Path(args.cache_dir))))
    data = clip(args.frames)
    pools = {
        "slots": PreparePool(spec, processes=1, slots=4 * args.frames, slot_bytes=2 << 20),
        "shared tensors": PreparePool(spec, processes=1),
    }
    try:
        for pool in pools.values():
            pool.start()
            pool.wait_ready()
            model_side_ms(pool, data, args.frames, 3)  # warm
        print(f"model-side CPU ms per {args.frames}-frame 640x480 video job")  # noqa: T201
        for round_ in range(1, args.rounds + 1):
            figures = {
                name: model_side_ms(pool, data, args.frames, args.jobs)
                for name, pool in pools.items()
            }
            line = ", ".join(f"{name} {ms:.2f}" for name, ms in figures.items())
            print(f"round {round_}: {line}")  # noqa: T201
    finally:
        for pool in pools.values():
            pool.close()


if __name__ == "__main__":
    main()
