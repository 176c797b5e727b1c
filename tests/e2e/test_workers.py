"""Worker processes started by the launcher: several per host, several models, each on its queue."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from core.config import ModelSpec, Settings
from core.models import Job, JobEvent
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job

CAT = (Path(__file__).resolve().parents[2] / "examples" / "images" / "cat.jpg").read_bytes()


def caption(model: str | None = None, tokens: int = 24) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "caption",
        "images": [{"data": base64.b64encode(CAT).decode()}],
        "params": {"max_new_tokens": tokens},
    }
    if model:
        body["model"] = model
    return body


def wait_workers(client: httpx.Client, count: int, process: ServiceProcess) -> list[dict]:
    """The workers listing once `count` workers report ready."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        workers = client.get("/v1/workers").json()["workers"]
        if sum(w["state"] == "ready" for w in workers) >= count:
            return workers
        time.sleep(0.5)
    raise AssertionError(f"{count} workers never became ready:\n{process.log()[-3000:]}")


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_two_cpu_workers_share_the_queue_and_run_each_job_once(
    service_settings: Settings, sessions: Any, tmp_path: Path
) -> None:
    port = free_port()
    # Two Celery threads per worker: neither can hold every message, so both get some.
    env = service_env(service_settings, INTERNVL_JOBS_WORKER_THREADS="2")
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    workers = ServiceProcess(["worker", "--devices", "cpu:2"], env, tmp_path / "workers.log")
    with api, workers, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        listed = wait_workers(client, 2, workers)
        ids = [client.post("/v1/jobs", json=caption()).json()["id"] for _ in range(12)]
        finished = [wait_job(client, job_id, timeout=240) for job_id in ids]
        pids = [w["pid"] for w in listed]
        pinned = [environment_of(pid).get("CUDA_VISIBLE_DEVICES") for pid in pids]
        models = client.get("/v1/models").json()["models"]
    assert [job["status"] for job in finished] == ["succeeded"] * 12, workers.log()[-3000:]
    assert sorted(w["device"] for w in listed) == ["cpu0", "cpu1"]
    assert all(w["id"].startswith(f"{w['device']}.tiny@") for w in listed)
    assert pinned == ["", ""]
    assert models[0]["workers"] == 2
    with sessions() as session:
        by_worker = dict(
            session.execute(select(Job.worker_id, func.count()).group_by(Job.worker_id)).all()
        )
        succeeded = session.scalar(
            select(func.count()).select_from(JobEvent).where(JobEvent.type == "job.succeeded")
        )
        attempts = set(session.scalars(select(Job.attempts)))
    assert set(by_worker) == {w["id"] for w in listed}  # jobs spread over both workers
    assert sum(by_worker.values()) == 12
    assert succeeded == 12 and attempts == {1}  # each job done exactly once


def test_each_model_is_served_from_its_own_queue(
    service_settings: Settings, tiny_spec: ModelSpec, tmp_path: Path
) -> None:
    from devtools.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "tiny-b", preset="test", seed=1)
    second = ModelSpec(alias="tiny-b", checkpoint=str(other), tile_size=64)
    settings = service_settings.model_copy(update={"models": [tiny_spec, second]})
    port = free_port()
    env = service_env(settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    workers = ServiceProcess(
        ["worker", "--models", "tiny,tiny-b", "--devices", "cpu"], env, tmp_path / "workers.log"
    )
    with api, workers, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        listed = wait_workers(client, 2, workers)
        plan = ["tiny", "tiny-b", None, "tiny-b"]
        ids = [client.post("/v1/jobs", json=caption(model, 12)).json()["id"] for model in plan]
        jobs = [wait_job(client, job_id, timeout=240) for job_id in ids]
        models = {m["alias"]: m for m in client.get("/v1/models").json()["models"]}
    assert {(w["model"], w["queue"]) for w in listed} == {
        ("tiny", "internvl.tiny"),
        ("tiny-b", "internvl.tiny-b"),
    }
    assert [job["model"] for job in jobs] == ["tiny", "tiny-b", "tiny", "tiny-b"]
    assert all(job["status"] == "succeeded" for job in jobs), workers.log()[-3000:]
    texts = [job["result"]["text"] for job in jobs]
    assert texts[0] == texts[2] and texts[1] == texts[3]  # same weights, same greedy answer
    assert texts[0] != texts[1]  # other weights: the job really ran on its own model
    assert models["tiny"]["workers"] == models["tiny-b"]["workers"] == 1
