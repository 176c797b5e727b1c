"""Reading a JSONL upload while it streams in: its jobs are counted as the bytes arrive and
the upload is refused as soon as it holds more than the batch limit, before it is parsed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import BinaryIO

from api.batch_intake import too_many_jobs

# The start of a line holding something other than whitespace: one job line of JSONL.
_JOB_LINE = re.compile(rb"^[^\S\n]*\S", re.MULTILINE)
CHUNK_BYTES = 1 << 20


class JsonlCounter:
    """The bytes of a JSONL upload, chunk by chunk, with its job lines counted as they come."""

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self.received = bytearray()
        self.counted_to = 0  # job lines before this offset are counted
        self.lines = 0

    def add(self, chunk: bytes) -> None:
        """Take one more chunk; 422 too_many_jobs once the lines complete so far pass the cap."""
        self.received.extend(chunk)
        end = self.received.rfind(b"\n") + 1
        if end > self.counted_to:
            self.lines += len(_JOB_LINE.findall(self.received, self.counted_to, end))
            self.counted_to = end
            if self.lines > self.max_jobs:
                raise too_many_jobs(self.max_jobs)

    def finish(self) -> bytes:
        """The whole upload, once its last (unterminated) line is counted too."""
        if _JOB_LINE.search(self.received, self.counted_to):
            self.lines += 1
        if self.lines > self.max_jobs:
            raise too_many_jobs(self.max_jobs)
        return bytes(self.received)


async def read_jsonl(chunks: AsyncIterator[bytes], *, max_jobs: int) -> bytes:
    """The whole upload, refused (422 too_many_jobs) once it has more than max_jobs lines."""
    counter = JsonlCounter(max_jobs)
    async for chunk in chunks:
        counter.add(chunk)
    return counter.finish()


def read_jsonl_file(file: BinaryIO, *, max_jobs: int) -> bytes:
    """An uploaded JSONL file (a multipart part), read and counted the same way; blocking,
    for a worker thread."""
    counter = JsonlCounter(max_jobs)
    while chunk := file.read(CHUNK_BYTES):
        counter.add(chunk)
    return counter.finish()
