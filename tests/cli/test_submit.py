"""`internvl-jobs submit --wait` against running stacks: the CLI, the client and long-polls."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import Settings
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http
from tests.support.cli import submit
from tests.support.media import EXAMPLES
from tests.support.videos import make_clip


def test_submit_and_wait_on_postgresql_redis_and_s3(
    service_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    with api, worker:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", process=api)
        caption = submit(base, str(EXAMPLES / "cat.jpg"), "--wait", "--max-new-tokens", "6")
        vqa = submit(
            base,
            str(EXAMPLES / "coffee.jpg"),
            "--task",
            "vqa",
            "--question",
            "What is in the cup?",
            "--wait",
            "--json",
        )
    assert caption.returncode == 0, caption.stderr + worker.log()[-3000:]
    assert caption.stdout.strip()
    job = json.loads(vqa.stdout)
    assert (job["status"], job["task"]) == ("succeeded", "vqa"), vqa.stderr
    assert job["usage"]["image_tiles"]


def test_submit_and_wait_in_the_embedded_dev_mode(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(INTERNVL_JOBS_DATA_DIR=str(tmp_path / "data"))
    with ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev.log") as dev:
        wait_http(f"{base}/readyz", timeout=120, process=dev)
        # What scripts/demo submits: dev mode's trained tiny model says what the picture shows.
        demo = ("--task", "caption", "--wait", "--json")
        done = submit(base, str(EXAMPLES / "red-circle.png"), *demo)
        queued = submit(base, str(EXAMPLES / "cat.jpg"))
        refused = submit(base, str(bogus))
    assert done.returncode == 0, done.stderr + dev.log()[-3000:]
    assert json.loads(done.stdout)["result"]["text"] == "a red circle"
    assert json.loads(queued.stdout)["status"] in ("queued", "running", "succeeded")
    assert refused.returncode == 2
    assert "415 unsupported_image_format" in refused.stderr


def test_submit_a_video_and_wait(service_settings: Settings, tmp_path: Path) -> None:
    clip = tmp_path / "clip.webm"
    clip.write_bytes(make_clip("webm", seconds=1.0, fps=8))
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    with api, worker:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", process=api)
        args = ["--task", "video", "--question", "What moves?", "--num-frames", "4"]
        video = submit(base, str(clip), *args, "--max-new-tokens", "4", "--wait", "--json")
        two = submit(base, str(clip), str(clip), "--task", "video")
        stray = submit(base, str(clip), "--fps", "2")
    job = json.loads(video.stdout)
    assert (job["status"], job["task"]) == ("succeeded", "video"), video.stderr + worker.log()
    assert (job["usage"]["frames"], job["usage"]["image_tiles"]) == (4, [1, 1, 1, 1])
    assert job["usage"]["frame_indices"] == [1, 3, 5, 7]
    assert (two.returncode, stray.returncode) == (2, 2)
    assert "one video" in two.stderr and "--task video" in stray.stderr
