"""Client against the live service: typed response_format, result.json, deadlines, queue."""

from __future__ import annotations

import io
from datetime import timedelta

from PIL import Image

from api.deps import Runtime
from core.db import transaction, utcnow
from core.jobs import claim_job, complete_job
from core.models import Job
from core.sweeper import sweep_once
from internvl_jobs_client import Client, InvalidRequestError, json_schema_format

SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_typed_response_format_reaches_the_job_and_result_json_reads_back(
    api_url: str, runtime: Runtime
) -> None:
    with Client(api_url) as client:
        job = client.submit("ocr", [png()], response_format=json_schema_format("bill", SCHEMA))
        with runtime.sessions() as session:
            stored = session.get(Job, job.id)
            assert stored is not None
            assert stored.spec["response_format"]["schema"] == SCHEMA
        with transaction(runtime.sessions) as session:  # what the worker writes
            claimed = claim_job(session, job.id, worker_id="w", lease_s=60)
            assert claimed is not None
            result = {"text": '{"total":12.5}', "finish_reason": "stop", "json": {"total": 12.5}}
            complete_job(session, job.id, attempt=claimed.attempts, result=result, usage={})
        done = client.get(job.id)
    assert done.result is not None and done.result.json == {"total": 12.5}
    assert done.result.finish_reason == "stop" and done.text == '{"total":12.5}'


def test_a_bad_schema_is_an_invalid_request(api_url: str) -> None:
    bad = json_schema_format("bad", {"type": "object", "not": {}})
    with Client(api_url) as client:
        try:
            client.submit("ocr", [png()], response_format=bad)
        except InvalidRequestError as exc:
            assert exc.code == "unsupported_schema"
        else:
            raise AssertionError("the schema was accepted")


def test_an_expired_job_is_done_and_a_queued_one_explains_its_wait(
    api_url: str, runtime: Runtime
) -> None:
    with Client(api_url) as client:
        job = client.submit("caption", [png()], expires_after_s=5)
        waiting = client.get(job.id)
        assert waiting.queue_position == 0 and waiting.queue_reason == "no_worker"
        assert waiting.expires_at is not None and not waiting.done
        sweep_once(
            sessions=runtime.sessions,
            celery=runtime.celery,
            settings=runtime.settings,
            now=utcnow() + timedelta(seconds=6),
        )
        ended = client.wait(job.id, timeout_s=10)
    assert ended.status == "expired" and ended.done and ended.result is None
