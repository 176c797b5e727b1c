"""What an operator sees of a running stack: probes, /metrics and the JSON logs, over HTTP."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from core.config import Settings
from core.db import make_engine, make_session_factory, transaction
from core.queue import make_celery
from core.tenants import create_api_key, ensure_tenant
from tests.support import ServiceProcess, free_port, service_env, wait_http, wait_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
DB_PASSWORD = "hunter2-db-password"  # PostgreSQL trusts loopback here; it must never be logged


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


# Celery prints this straight to stdout from its signal handler, bypassing logging.
CELERY_SHUTDOWN_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")


def wait_until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def json_lines(process: ServiceProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each of which must be one JSON object."""
    lines = [line for line in process.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines if not CELERY_SHUTDOWN_NOTICE.match(line)]


class EventTap:
    """Listens to Celery's event stream the way Flower does, and keeps the event types."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.types: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as connection:
            receiver = self.app.events.Receiver(
                connection, handlers={"*": lambda event: self.types.append(event["type"])}
            )
            while not self.stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except (TimeoutError, OSError):
                    continue

    def __enter__(self) -> EventTap:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def api_key_for(settings: Settings) -> str:
    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        tenant = ensure_tenant(session, "acme")
        _, key = create_api_key(session, tenant.id)
    engine.dispose()
    return key


def test_probes_metrics_and_logs_of_a_running_stack(
    service_settings: Settings, tmp_path: Path
) -> None:
    url = make_url(service_settings.database_url).set(password=DB_PASSWORD)
    settings = service_settings.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "auth_enabled": True,
            "log_json": True,
            "worker_probe_port": free_port(),
            "sweeper_probe_port": free_port(),
        }
    )
    key = api_key_for(settings)
    image = (EXAMPLES / "cat.jpg").read_bytes()
    port = free_port()
    env = service_env(settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    sweeper = ServiceProcess(["sweeper"], env, tmp_path / "sweeper.log")
    base = f"http://127.0.0.1:{port}"
    probes = f"http://127.0.0.1:{settings.worker_probe_port}"
    with api, worker, sweeper, EventTap(settings) as events:
        wait_http(f"{base}/readyz", process=api)
        wait_http(f"{probes}/readyz", timeout=180, process=worker)
        wait_until(lambda: "worker-heartbeat" in events.types or "worker-online" in events.types)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            body = {
                "task": "caption",
                "images": [{"data": base64.b64encode(image).decode()}],
                "params": {"max_new_tokens": 5},
            }
            ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(3)]
            jobs = [wait_job(client, job_id, timeout=180) for job_id in ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * 3, worker.log()[-3000:]
        ready = httpx.get(f"{probes}/readyz").json()
        worker_metrics = samples(f"{probes}/metrics")
        api_metrics = samples(f"{base}/metrics")
        wait_http(f"http://127.0.0.1:{settings.sweeper_probe_port}/healthz", process=sweeper)
        sweeper_metrics = samples(f"http://127.0.0.1:{settings.sweeper_probe_port}/metrics")
        flower_sees = {"task-sent", "task-received", "task-started", "task-succeeded"}
        wait_until(lambda: flower_sees <= set(events.types))

    assert ready["model_loaded"] is True and ready["state"] == "ready"
    assert ready["jobs_done"] == 3 and ready["last_batch_at"] is not None

    tiny = {"model": "tiny", "task": "caption"}
    assert (
        value(worker_metrics, "internvl_jobs_jobs_finished_total", outcome="succeeded", **tiny) == 3
    )
    assert value(worker_metrics, "internvl_jobs_job_queue_wait_seconds_count", model="tiny") == 3
    assert value(worker_metrics, "internvl_jobs_job_inference_seconds_count", **tiny) == 3
    assert value(worker_metrics, "internvl_jobs_batch_size_sum", model="tiny") == 3
    worker_labels = {"model": "tiny", "worker": ready["worker"]}
    assert value(worker_metrics, "internvl_jobs_generated_tokens_total", **worker_labels) > 0
    assert value(worker_metrics, "internvl_jobs_image_tiles_total", **worker_labels) >= 3
    assert (
        value(
            worker_metrics, "internvl_jobs_worker_last_heartbeat_timestamp_seconds", **worker_labels
        )
        > 0
    )

    assert value(api_metrics, "internvl_jobs_jobs_submitted_total", **tiny) == 3
    assert value(api_metrics, "internvl_jobs_queue_depth", model="tiny", queue="internvl.tiny") == 0
    assert value(api_metrics, "internvl_jobs_workers", model="tiny", state="ready") == 1
    assert value(sweeper_metrics, "internvl_jobs_sweeper_last_sweep_timestamp_seconds") > 0

    logs = api.log() + worker.log() + sweeper.log()
    assert DB_PASSWORD not in logs
    assert key not in logs and key.rsplit("_", 1)[1] not in logs
    assert base64.b64encode(image).decode()[100:160] not in logs

    worker_job_lines = [entry for entry in json_lines(worker) if entry.get("job_id")]
    assert {entry["job_id"] for entry in worker_job_lines} == set(ids)
    for entry in worker_job_lines:
        assert entry["tenant"] and entry["worker"] == ready["worker"], entry
    succeeded = [e for e in worker_job_lines if e.get("event") == "job.succeeded"]
    assert {entry["job_id"] for entry in succeeded} == set(ids)
    assert all(entry["completion_tokens"] > 0 for entry in succeeded)

    access = [
        e for e in json_lines(api) if e.get("logger") == "api.access" and e["method"] == "POST"
    ]
    assert {entry["job_id"] for entry in access} == set(ids)
    assert all(
        entry["tenant"] and entry["request_id"] and entry["status"] == 202 for entry in access
    )
