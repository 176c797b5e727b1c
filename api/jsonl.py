"""Reading a JSONL upload while it streams in: its jobs are counted as the bytes arrive and
the upload is refused as soon as it holds more than the batch limit, before it is parsed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile

from api.batch_intake import too_many_jobs

# The start of a line holding something other than whitespace: one job line of JSONL.
_JOB_LINE = re.compile(rb"^[^\S\n]*\S", re.MULTILINE)
CHUNK_BYTES = 1 << 20


async def read_jsonl(chunks: AsyncIterator[bytes], *, max_jobs: int) -> bytes:
    """The whole upload, refused (422 too_many_jobs) once it has more than max_jobs lines."""
    received = bytearray()
    counted_to = 0  # job lines before this offset are counted
    lines = 0
    async for chunk in chunks:
        received.extend(chunk)
        end = received.rfind(b"\n") + 1
        if end > counted_to:
            lines += len(_JOB_LINE.findall(received, counted_to, end))
            counted_to = end
            if lines > max_jobs:
                raise too_many_jobs(max_jobs)
    if _JOB_LINE.search(received, counted_to):
        lines += 1
    if lines > max_jobs:
        raise too_many_jobs(max_jobs)
    return bytes(received)


async def upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """An uploaded file's bytes, a chunk at a time."""
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk
