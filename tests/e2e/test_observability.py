"""What an operator sees of a running stack: probes, /metrics, Celery events and JSON logs.

API, GPU worker (on CPU), sweeper and webhook sender run as separate processes on PostgreSQL,
Redis and the S3 server; everything is observed over HTTP and from the processes' output.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from core.config import Settings
from core.db import make_engine, make_session_factory, transaction
from core.queue import make_celery
from core.tenants import create_api_key, ensure_tenant
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job
from tests.support.webhook_receiver import Receiver

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
DB_PASSWORD = "hunter2-db-password"  # PostgreSQL trusts loopback here; it must never be logged
# Celery prints this straight to stdout from its signal handler, bypassing logging.
CELERY_SHUTDOWN_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")
# The task events Flower shows a job by. Task events are off by default (as in Celery); Flower
# turns the workers' on at run time with its enable_events command, as the tap does here.
FLOWER_NEEDS = {"task-received", "task-started", "task-succeeded"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


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


@dataclass
class Observed:
    """What the test saw while the stack ran, and the secrets that must not be logged."""

    job_ids: list[str]
    api_key: str
    webhook_secret: str
    ready: dict[str, Any]
    metrics: dict[str, Samples]
    processes: dict[str, ServiceProcess]
    events: list[str] = field(default_factory=list)


def observed_settings(service_settings: Settings) -> Settings:
    url = make_url(service_settings.database_url).set(password=DB_PASSWORD)
    return service_settings.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "auth_enabled": True,
            "log_json": True,
            "worker_probe_port": free_port(),
            "sweeper_probe_port": free_port(),
            "webhook_probe_port": free_port(),
            "webhook_allow_private": True,
            "webhook_allow_http": True,
            "webhook_poll_interval_s": 0.2,
        }
    )


def api_key_for(settings: Settings) -> str:
    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        tenant = ensure_tenant(session, "acme")
        _, key = create_api_key(session, tenant.id)
    engine.dispose()
    return key


def run_stack(settings: Settings, tmp_path: Path) -> Observed:
    """Start every process, submit three jobs with webhooks, and collect what is visible."""
    key, port = api_key_for(settings), free_port()
    env = service_env(settings)
    commands = {
        "api": ["api", "--port", str(port)],
        "worker": ["worker", "--devices", "cpu"],
        "sweeper": ["sweeper"],
        "webhooks": ["webhooks"],
    }
    processes = {n: ServiceProcess(c, env, tmp_path / f"{n}.log") for n, c in commands.items()}
    probe = {
        "worker": settings.worker_probe_port,
        "sweeper": settings.sweeper_probe_port,
        "webhooks": settings.webhook_probe_port,
    }
    base = f"http://127.0.0.1:{port}"
    with Receiver() as receiver, EventTap(settings) as tap:
        for process in processes.values():
            process.start()
        try:
            wait_http(f"{base}/readyz", process=processes["api"])
            for name, probe_port in probe.items():
                wait_http(
                    f"http://127.0.0.1:{probe_port}/readyz", timeout=180, process=processes[name]
                )
            wait_until(lambda: {"worker-heartbeat", "worker-online"} & set(tap.types))
            tap.app.control.enable_events()  # what Flower sends every few seconds
            with httpx.Client(base_url=base, timeout=30) as client:
                client.headers["Authorization"] = f"Bearer {key}"
                ids = submit_three(client, receiver.url())
                secret = client.get("/v1/webhooks/secret").json()["secret"]
            receiver.wait_for(3, timeout=60)
            wait_until(lambda: FLOWER_NEEDS <= set(tap.types))
            wait_until(lambda: webhook_attempts(probe["webhooks"]) == 3)
            ready = httpx.get(f"http://127.0.0.1:{probe['worker']}/readyz").json()
            scraped = {n: samples(f"http://127.0.0.1:{p}/metrics") for n, p in probe.items()}
            scraped["api"] = samples(f"{base}/metrics")
        finally:
            for process in processes.values():
                process.stop()
    return Observed(ids, key, secret, ready, scraped, processes, list(tap.types))


def submit_three(client: httpx.Client, hook_url: str) -> list[str]:
    image = base64.b64encode((EXAMPLES / "cat.jpg").read_bytes()).decode()
    body = {
        "task": "caption",
        "images": [{"data": image}],
        "params": {"max_new_tokens": 5},
        "webhook": {"url": hook_url, "events": ["job.succeeded"]},
    }
    ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(3)]
    jobs = [wait_job(client, job_id, timeout=180) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    return ids


def webhook_attempts(port: int) -> float:
    found = samples(f"http://127.0.0.1:{port}/metrics")
    return value(found, "internvl_jobs_webhook_attempts_total", outcome="succeeded")


def test_probes_metrics_events_and_logs_of_a_running_stack(
    service_settings: Settings, tmp_path: Path
) -> None:
    seen = run_stack(observed_settings(service_settings), tmp_path)
    assert "task-sent" not in seen.events  # the API sends it only with task_events on
    assert seen.ready["model_loaded"] is True and seen.ready["state"] == "ready"
    assert seen.ready["jobs_done"] == 3 and seen.ready["last_batch_at"] is not None
    check_worker_metrics(seen.metrics["worker"], seen.ready["worker"])
    check_deployment_metrics(seen.metrics)
    check_logs_hold_no_secret(seen)
    check_job_lines(seen)


def check_worker_metrics(worker: Samples, name: str) -> None:
    tiny = {"model": "tiny", "task": "caption"}
    assert value(worker, "internvl_jobs_jobs_finished_total", outcome="succeeded", **tiny) == 3
    assert value(worker, "internvl_jobs_job_queue_wait_seconds_count", model="tiny") == 3
    assert value(worker, "internvl_jobs_job_inference_seconds_count", **tiny) == 3
    assert value(worker, "internvl_jobs_batch_size_sum", model="tiny") == 3
    labels = {"model": "tiny", "worker": name}
    assert value(worker, "internvl_jobs_generated_tokens_total", **labels) > 0
    assert value(worker, "internvl_jobs_image_tiles_total", **labels) >= 3
    beat = "internvl_jobs_worker_last_heartbeat_timestamp_seconds"
    assert value(worker, beat, **labels) > 0


def check_deployment_metrics(metrics: dict[str, Samples]) -> None:
    api = metrics["api"]
    tiny = {"model": "tiny", "task": "caption"}
    assert value(api, "internvl_jobs_jobs_submitted_total", **tiny) == 3
    assert value(api, "internvl_jobs_queue_depth", model="tiny", queue="internvl.tiny") == 0
    workers = {k: v for k, v in api.items() if k[0].startswith("internvl_jobs_worker")}
    assert value(api, "internvl_jobs_workers", model="tiny", state="ready") == 1, workers
    sweep = "internvl_jobs_sweeper_last_sweep_timestamp_seconds"
    assert value(metrics["sweeper"], sweep) > 0
    attempts = "internvl_jobs_webhook_attempts_total"
    assert value(metrics["webhooks"], attempts, outcome="succeeded") == 3


def check_logs_hold_no_secret(seen: Observed) -> None:
    logs = "".join(process.log() for process in seen.processes.values())
    image = base64.b64encode((EXAMPLES / "cat.jpg").read_bytes()).decode()
    assert DB_PASSWORD not in logs
    assert seen.api_key.rsplit("_", 1)[1] not in logs
    assert seen.webhook_secret.removeprefix("whsec_") not in logs
    assert image[100:160] not in logs


def check_job_lines(seen: Observed) -> None:
    worker_log = json_lines(seen.processes["worker"])
    worker_lines = [e for e in worker_log if e.get("job_id")]
    assert {entry["job_id"] for entry in worker_lines} == set(seen.job_ids)
    for entry in worker_lines:
        assert entry["tenant"] and entry["worker"] == seen.ready["worker"], entry
    succeeded = [e for e in worker_lines if e.get("event") == "job.succeeded"]
    assert {entry["job_id"] for entry in succeeded} == set(seen.job_ids)
    assert all(entry["completion_tokens"] > 0 for entry in succeeded)
    # Celery's own line per task received and succeeded would repeat the job events' lines.
    loggers = {e.get("logger") for e in worker_log}
    assert not loggers & {"celery.worker.strategy", "celery.app.trace"}, loggers
    access = [
        e
        for e in json_lines(seen.processes["api"])
        if e.get("logger") == "api.access" and e["method"] == "POST"
    ]
    assert {entry["job_id"] for entry in access} == set(seen.job_ids)
    assert all(e["tenant"] and e["request_id"] and e["status"] == 202 for e in access)
    sent = [e for e in json_lines(seen.processes["webhooks"]) if e.get("delivery_id")]
    assert {entry["job_id"] for entry in sent} == set(seen.job_ids)
    assert all(entry["tenant"] for entry in sent)
    json_lines(seen.processes["sweeper"])  # every line parses
