"""The whole path in separate OS processes: HTTP submit -> queue -> worker -> result -> poll."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import httpx
from PIL import Image

from core.config import Settings
from core.tiling import tile_count
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def caption_body(name: str = "cat.jpg", **params: int) -> dict:
    data = base64.b64encode((EXAMPLES / name).read_bytes()).decode()
    return {"task": "caption", "images": [{"data": data}], "params": params}


def test_round_trip_on_postgresql_redis_and_s3(service_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    with api, worker:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", process=api)
        with httpx.Client(base_url=base, timeout=30) as client:
            submitted = client.post("/v1/jobs", json=caption_body(max_new_tokens=12))
            assert submitted.status_code == 202, submitted.text
            vqa = client.post(
                "/v1/jobs",
                json={**caption_body(), "task": "vqa", "question": "What animal is this?"},
            )
            job = wait_job(client, submitted.json()["id"], timeout=180)
            answered = wait_job(client, vqa.json()["id"], timeout=60)
    assert job["status"] == "succeeded", worker.log()[-3000:]
    assert job["result"]["text"]
    with Image.open(EXAMPLES / "cat.jpg") as image:
        width, height = image.size
    tiles = tile_count(width, height, tile_size=64, max_tiles=12)
    usage = job["usage"]
    assert usage["image_tiles"] == [tiles]
    assert usage["prompt_tokens"] > tiles * 16
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["queue_s"] >= 0 and usage["inference_s"] > 0
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert answered["status"] == "succeeded" and answered["task"] == "vqa"


def dev_env(data_dir: Path) -> dict[str, str]:
    return service_env(
        INTERNVL_JOBS_DATA_DIR=str(data_dir),
        INTERNVL_JOBS_LEASE_S="3",
        INTERNVL_JOBS_SWEEP_INTERVAL_S="1",
        INTERNVL_JOBS_STALE_QUEUED_S="5",
    )


def test_embedded_dev_mode_round_trip_and_restart(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dev_env(tmp_path / "data")
    dev = ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev.log")
    with dev:
        wait_http(f"{base}/readyz", timeout=120, process=dev)
        with httpx.Client(base_url=base, timeout=30) as client:
            first = client.post("/v1/jobs", json=caption_body(max_new_tokens=6)).json()
            done = wait_job(client, first["id"], timeout=180)
        assert done["status"] == "succeeded", dev.log()[-3000:]
        assert done["model"] == "tiny-internvl"
    assert dev.process is not None and dev.process.returncode == 0
    with ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev2.log") as again:
        wait_http(f"{base}/readyz", timeout=120, process=again)
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get(f"/v1/jobs/{first['id']}").json()["status"] == "succeeded"


def test_embedded_jobs_survive_a_crash_of_the_whole_stack(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dev_env(tmp_path / "data")
    dev = ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev.log").start()
    try:
        wait_http(f"{base}/readyz", timeout=120, process=dev)
        with httpx.Client(base_url=base, timeout=30) as client:
            ids = [
                client.post("/v1/jobs", json=caption_body(max_new_tokens=32)).json()["id"]
                for _ in range(6)
            ]
    finally:
        dev.stop(signal.SIGKILL)
    with ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev2.log") as again:
        wait_http(f"{base}/readyz", timeout=120, process=again)
        with httpx.Client(base_url=base, timeout=30) as client:
            finished = [wait_job(client, job_id, timeout=120) for job_id in ids]
    assert [job["status"] for job in finished] == ["succeeded"] * 6, again.log()[-3000:]
