"""A corpus of hostile request bodies and targets (no fixtures on disk): every class of input
that once reached a 500 or was accepted although it is not JSON."""

from __future__ import annotations

import base64
import json

DEEP = 100_000  # far past Python's recursion limit

# Bodies that are not strict JSON: non-finite numbers wherever a number may go.
NON_FINITE = [
    b'{"task": "caption", "images": [], "metadata": {"x": NaN}}',
    b'{"task": "caption", "images": [], "metadata": {"x": Infinity}}',
    b'{"task": "caption", "images": [], "metadata": {"x": -Infinity}}',
    b'{"task": "caption", "images": [], "metadata": {"x": [1e999]}}',
    b'{"task": "caption", "images": [], "params": {"temperature": NaN}}',
]


def deeply_nested(depth: int = DEEP) -> bytes:
    """An array nested `depth` deep, as a job's metadata value."""
    return b'{"task": "caption", "metadata": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


def cursor(text: str) -> str:
    """A cursor as the service encodes them, around any text."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Cursors whose timestamp overflows when converted to UTC, or whose id holds a NUL.
BAD_CURSORS = [
    cursor("0001-01-01T00:00:00+23:59|job_x"),
    cursor("9999-12-31T23:59:59-23:59|job_x"),
    cursor("2026-01-01T00:00:00+00:00|job_\x00x"),
]

# Targets with NUL in a path id or a query filter.
NUL_TARGETS = [
    "/v1/jobs/job_%00x",
    "/v1/jobs/job_%00x/webhooks",
    "/v1/batches/batch_%00x",
    "/v1/batches/batch_%00x/results",
    "/v1/images/sha256:%00",
    "/v1/jobs?model=tiny%00",
    "/v1/jobs?batch_id=b%00",
    "/v1/jobs?cursor=%00",
]


def with_nul(image_base64: str, where: str) -> bytes:
    """A job that would be accepted but for a NUL character in `where` (custom_id, metadata
    or prompt)."""
    job: dict = {"task": "caption", "images": [{"data": image_base64}]}
    if where == "custom_id":
        job["custom_id"] = "a\u0000b"
    elif where == "metadata":
        job["metadata"] = {"k\u0000": "v"}
    else:
        job["prompt"] = "describe\u0000"
    return json.dumps(job).encode()
