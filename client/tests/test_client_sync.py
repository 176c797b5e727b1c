"""Client against the live service: submit, wait, list, images, batches, typed errors."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from api.deps import Runtime
from internvl_jobs_client import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from tests.support.api import finish_job, make_key


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def finish_later(runtime: Runtime, job_id: str, text: str = "a red square") -> threading.Timer:
    timer = threading.Timer(0.5, finish_job, args=(runtime, job_id, text))
    timer.start()
    return timer


def test_submit_a_file_and_wait_for_the_result(
    api_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(png())
    with Client(api_url) as client:
        job = client.submit("caption", [path], params={"max_new_tokens": 8}, metadata={"n": 1})
        assert (job.status, job.task, job.metadata) == ("queued", "caption", {"n": 1})
        finish_later(runtime, job.id).join()
        done = client.wait(job.id, timeout_s=30)
    assert done.done and done.status == "succeeded"
    assert done.text == "a red square"
    assert done.usage is not None and done.usage.image_tiles == [1]


def test_submit_with_wait_returns_the_finished_job(api_url: str, runtime: Runtime) -> None:
    with Client(api_url) as client:
        first = client.submit("vqa", [png()], question="Which colour?")
        timer = finish_later(runtime, first.id)
        assert client.wait(first.id).status == "succeeded"
        timer.join()


def test_wait_with_a_timeout_returns_the_job_as_it_is(api_url: str) -> None:
    with Client(api_url, long_poll_s=1) as client:
        job = client.submit("caption", [png()])
        assert client.wait(job.id, timeout_s=1).status == "queued"


def test_list_and_iterate_jobs(api_url: str) -> None:
    with Client(api_url) as client:
        ids = [client.submit("caption", [png()]).id for _ in range(5)]
        page = client.list_jobs(limit=2)
        assert [job.id for job in page.data] == ids[::-1][:2] and page.next_cursor
        assert [job.id for job in client.iter_jobs(limit=2)] == ids[::-1]
        assert list(client.iter_jobs(status="succeeded")) == []


def test_upload_once_and_reuse_in_a_chat(api_url: str) -> None:
    with Client(api_url) as client:
        image = client.upload_image(png(size=(640, 480)))
        assert (image.format, image.width, image.height, image.tiles) == ("PNG", 640, 480, 13)
        assert client.upload_image(png(size=(640, 480))).image_id == image.image_id
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": 0}, {"type": "text", "text": "Hi"}],
            }
        ]
        job = client.submit("chat", [image.image_id], messages=messages)
        assert job.status == "queued"
        assert client.get_image(image.image_id).tiles == 13


def test_batch_round_trip(api_url: str, runtime: Runtime) -> None:
    with Client(api_url) as client:
        image_id = client.upload_image(png()).image_id
        jobs = [
            {"task": "caption", "images": [{"image_id": image_id}], "custom_id": name}
            for name in ("a", "b")
        ]
        batch = client.create_batch(jobs, metadata={"run": 1})
        assert (batch.status, batch.total, batch.counts["queued"]) == ("in_progress", 2, 2)
        for result in client.batch_results(batch.id):
            finish_job(runtime, result.job_id, text=f"text of {result.custom_id}")
        finished = client.wait_batch(batch.id, timeout_s=30, poll_s=0.2)
        results = {r.custom_id: r.text for r in client.batch_results(batch.id)}
    assert finished.status == "completed" and finished.counts["succeeded"] == 2
    assert results == {"a": "text of a", "b": "text of b"}


def test_cancel_a_batch(api_url: str) -> None:
    with Client(api_url) as client:
        image_id = client.upload_image(png()).image_id
        batch = client.create_batch([{"task": "caption", "images": [{"image_id": image_id}]}])
        canceled = client.cancel_batch(batch.id)
    assert canceled.status == "canceled" and canceled.counts["canceled"] == 1


def test_cancel_a_job_and_a_second_cancel_is_a_conflict(api_url: str) -> None:
    with Client(api_url) as client:
        job = client.submit("caption", [png()])
        assert client.cancel(job.id).status == "canceled"
        with pytest.raises(ConflictError) as conflict:
            client.cancel(job.id)
    assert conflict.value.code == "job_finished"


def test_a_retried_submission_with_its_idempotency_key_is_the_same_job(api_url: str) -> None:
    with Client(api_url) as client:
        first = client.submit("caption", [png()], idempotency_key="order-42")
        again = client.submit("caption", [png()], idempotency_key="order-42")
    assert again.id == first.id


def test_errors_are_typed_with_their_code(api_url: str) -> None:
    with Client(api_url) as client:
        with pytest.raises(NotFoundError) as missing:
            client.get("job_nothing")
        with pytest.raises(InvalidRequestError) as invalid:
            client.submit("vqa", [png()])
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert (invalid.value.status, invalid.value.code) == (422, "missing_question")


def test_api_keys_are_sent(auth_api_url: str, auth_runtime: Runtime) -> None:
    key = make_key(auth_runtime, "acme")["Authorization"].split()[1]
    with Client(auth_api_url, api_key=key) as client:
        assert client.submit("caption", [png()]).status == "queued"
    with (
        Client(auth_api_url, api_key="ivj_wrong_key") as client,
        pytest.raises(AuthenticationError),
    ):
        client.list_jobs()


def test_the_client_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, internvl_jobs_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('core', 'api', 'worker', 'fastapi', 'sqlalchemy', 'torch', 'PIL', 'celery')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
