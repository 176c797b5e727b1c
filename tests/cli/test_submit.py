"""`internvl-jobs submit --wait` against running stacks: the CLI, the client and long-polls."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import Settings
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http
from tests.support.cli import submit
from tests.support.media import EXAMPLES


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
        demo = ("--task", "vqa", "--question", "What colour is the shape?", "--wait", "--json")
        done = submit(base, str(EXAMPLES / "red-circle.png"), *demo)
        queued = submit(base, str(EXAMPLES / "cat.jpg"))
        refused = submit(base, str(bogus))
    assert done.returncode == 0, done.stderr + dev.log()[-3000:]
    assert json.loads(done.stdout)["result"]["text"] == "red"
    assert json.loads(queued.stdout)["status"] in ("queued", "running", "succeeded")
    assert refused.returncode == 2
    assert "415 unsupported_image_format" in refused.stderr
