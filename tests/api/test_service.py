"""Service routes: models, health, readiness, OpenAPI; and the API stays free of torch."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from fastapi.testclient import TestClient


def test_models_lists_the_registry(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert models == [
        {
            "alias": "tiny",
            "checkpoint": models[0]["checkpoint"],
            "queue": "internvl.tiny",
            "default": True,
            "tile_size": 64,
            "max_tiles": 12,
            "workers": 0,
            "ready_workers": 0,
            "starting_workers": 0,
            "queued": 0,
            "running": 0,
            "throughput_per_min": 0.0,
        }
    ]


def test_healthz_is_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}


def test_readyz_checks_database_broker_and_storage(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_names_what_is_down(client: TestClient, runtime) -> None:  # type: ignore[no-untyped-def]
    from core.storage import S3Storage

    runtime.storage = S3Storage(
        "bucket-that-does-not-exist", endpoint_url=runtime.settings.s3_endpoint_url
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"].startswith("error")


def test_openapi_documents_the_job_request(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "JobCreate" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_importing_the_api_imports_neither_torch_nor_worker_code() -> None:
    code = (
        "import sys; import api.app; from api.app import create_app; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'worker')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def beat(runtime, worker_id: str, device: str, *, state: str, jobs: int) -> None:  # type: ignore[no-untyped-def]
    """Record a worker's heartbeat the way a worker process does."""
    from worker.heartbeat import Heartbeat

    heartbeat = Heartbeat(
        sessions=runtime.sessions,
        worker_id=worker_id,
        device=device,
        model="tiny",
        queue="internvl.tiny",
        lease_s=30,
        interval_s=1,
        held=dict,
        on_check=lambda check: None,
        stats=lambda: {"jobs_done": jobs, "batches": 2, "mean_batch_size": jobs / 2},
    )
    heartbeat.state = state
    heartbeat.beat()


def test_workers_lists_heartbeats_with_batch_statistics(client: TestClient, runtime) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from core.db import transaction, utcnow
    from core.models import Worker

    beat(runtime, "cpu0.tiny@host-a", "cpu0", state="ready", jobs=6)
    beat(runtime, "cpu1.tiny@host-a", "cpu1", state="ready", jobs=4)
    beat(runtime, "cpu2.tiny@host-b", "cpu2", state="ready", jobs=1)
    with transaction(runtime.sessions) as session:  # host-b went silent a minute ago
        session.execute(
            update(Worker)
            .where(Worker.id == "cpu2.tiny@host-b")
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=1))
        )
    workers = {w["id"]: w for w in client.get("/v1/workers").json()["workers"]}
    assert set(workers) == {"cpu0.tiny@host-a", "cpu1.tiny@host-a", "cpu2.tiny@host-b"}
    first = workers["cpu0.tiny@host-a"]
    assert (first["device"], first["model"], first["queue"]) == ("cpu0", "tiny", "internvl.tiny")
    assert (first["state"], first["jobs_done"]) == ("ready", 6)
    assert first["stats"]["mean_batch_size"] == 3.0
    assert workers["cpu2.tiny@host-b"]["state"] == "lost"
    assert client.get("/v1/models").json()["models"][0]["workers"] == 2
