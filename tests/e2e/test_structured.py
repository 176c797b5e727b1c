"""Structured output through HTTP: a worker process holds each job to its schema, in batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from core.config import Settings
from tests.support import ServiceProcess, free_port, service_env, wait_http, wait_job
from tests.support.cli import submit
from tests.support.media import CAT, EXAMPLES, WIDE, b64
from tests.support.structured import DOCUMENT_TYPE, TICKET


def ticket_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET}}


def job(data: bytes, max_new_tokens: int = 60, **extra: Any) -> dict[str, Any]:
    body = {"task": "ocr", "images": [{"data": b64(data)}], **extra}
    body["params"] = {"max_new_tokens": max_new_tokens, **extra.get("params", {})}
    return body


@pytest.mark.timeout(900)  # a worker process, seven jobs and a batch on a shared CPU
def test_schema_jobs_answer_valid_json_beside_free_jobs(
    service_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    requests = {
        "ticket": job(CAT, response_format=ticket_format()),
        "free": job(CAT, max_new_tokens=12),
        "sampled": job(WIDE, response_format=ticket_format(), params={"do_sample": True}),
        "cut": job(WIDE, max_new_tokens=4, response_format=ticket_format()),
        "preset": {
            "task": "prompt",
            "images": [{"data": b64(WIDE)}],
            "preset": "document_type",
            "params": {"max_new_tokens": 150},
        },
    }
    lines = [
        job(CAT, custom_id="j-ticket", response_format=ticket_format()),
        job(WIDE, custom_id="j-free"),
    ]
    with api, worker, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        ids = {
            name: client.post("/v1/jobs", json=body).json()["id"] for name, body in requests.items()
        }
        jsonl = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        batch = client.post(
            "/v1/batches", content=jsonl, headers={"content-type": "application/jsonl"}
        )
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
        schema_file = tmp_path / "ticket.json"
        schema_file.write_text(json.dumps(TICKET))
        cli = submit(
            f"http://127.0.0.1:{port}",
            str(EXAMPLES / "cat.jpg"),
            "--json-schema",
            str(schema_file),
            "--expires-after",
            "600",
            "--max-new-tokens",
            "60",
            "--wait",
        )
        done = {name: wait_job(client, job_id, timeout=240) for name, job_id in ids.items()}
        batch_jobs = client.get("/v1/jobs", params={"batch_id": batch_id}).json()["data"]
        in_batch = {j["custom_id"]: wait_job(client, j["id"], timeout=240) for j in batch_jobs}
    for name, ended in {**done, **in_batch}.items():
        assert ended["status"] == "succeeded", (name, ended, worker.log()[-3000:])
    assert cli.returncode == 0, cli.stderr
    jsonschema.validate(json.loads(cli.stdout), TICKET)  # --wait prints the parsed answer
    jsonschema.validate(done["ticket"]["result"]["json"], TICKET)
    assert json.loads(done["ticket"]["result"]["text"]) == done["ticket"]["result"]["json"]
    assert "json" not in done["free"]["result"]
    jsonschema.validate(done["sampled"]["result"]["json"], TICKET)
    assert done["sampled"]["result"]["seed"] is not None
    assert done["cut"]["result"]["finish_reason"] == "length"
    assert "json" not in done["cut"]["result"]
    jsonschema.validate(done["preset"]["result"]["json"], DOCUMENT_TYPE)
    jsonschema.validate(in_batch["j-ticket"]["result"]["json"], TICKET)
    assert "json" not in in_batch["j-free"]["result"]
