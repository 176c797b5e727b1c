"""AsyncClient against the live service: the same operations, awaited."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image

from api.deps import Runtime
from internvl_jobs_client import AsyncClient, NotFoundError
from tests.support.api import finish_job


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_async_submit_wait_list_and_batch(api_url: str, runtime: Runtime) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_url) as client:
            job = await client.submit("caption", [png()])
            threading.Timer(0.5, finish_job, args=(runtime, job.id)).start()
            done = await client.wait(job.id, timeout_s=30)
            assert done.status == "succeeded" and done.text == "a red square"
            image = await client.upload_image(png())
            batch = await client.create_batch(
                [{"task": "caption", "images": [{"image_id": image.image_id}], "custom_id": "x"}]
            )
            assert [r.custom_id for r in await client.batch_results(batch.id)] == ["x"]
            listed = [j.id async for j in client.iter_jobs(limit=1)]
            assert len(listed) == 2 and job.id in listed
            with pytest.raises(NotFoundError):
                await client.get_batch("batch_nothing")

    asyncio.run(scenario())
