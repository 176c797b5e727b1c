"""Work for prepare processes in tests: one that stops mid-way to be killed, one that dies.

Module-level functions, so a prepare process (started by the fork server, with this
repository on its path) can import them; bound to their arguments with functools.partial.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.prompts import Conversation, build_conversation
from worker.prepare_pool import prepare_job, prepare_video_job
from worker.prepare_slots import WireInputs
from worker.preparer import ImageSource, JobInputs
from worker.video import VideoInputs


def stop_once(
    marker: str,
    conversation: Conversation,
    images: Sequence[ImageSource | int],
    max_tiles: int,
    on_device: bool = False,
    slots: list[int | None] | None = None,
) -> JobInputs | WireInputs:
    """The first call writes its process id to `marker` and waits there to be killed; the
    calls after it (the marker exists) prepare as a prepare process does."""
    path = Path(marker)
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_text(str(os.getpid()))
        partial.rename(path)
        time.sleep(110)  # killed long before
    return prepare_job(conversation, images, max_tiles, on_device, slots)


def stop_video_once(marker: str, *args: Any) -> VideoInputs:
    """`stop_once` for a video job: the first call waits to be killed, the next prepares."""
    path = Path(marker)
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_text(str(os.getpid()))
        partial.rename(path)
        time.sleep(110)  # killed long before
    return prepare_video_job(*args)


def die(
    conversation: Conversation,
    images: Sequence[ImageSource | int],
    max_tiles: int,
    on_device: bool = False,
    slots: list[int | None] | None = None,
) -> JobInputs:
    """A prepare process that dies while preparing (a decoder crash, the OOM killer)."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("a killed process returns nothing")


def wait_for_pid(marker: Path, timeout: float = 60.0) -> int:
    """The process id `stop_once` wrote, once it is there."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prepare process reached {marker}")
        time.sleep(0.05)
    return int(marker.read_text())


def two_images(engine: Any) -> Conversation:
    """A vqa conversation about two images, with `engine`'s control tokens."""
    spec = {"task": "vqa", "question": "Which one is larger?", "images": ["a", "b"]}
    return build_conversation(spec, control_tokens=engine.control_tokens)
