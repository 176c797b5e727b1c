"""Multipart bodies are parsed on worker threads: while one upload's parsing is held up (as
a large or hostile body would hold it), the event loop goes on serving other requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import python_multipart

from api.app import create_app
from api.deps import Runtime
from tests.support import LiveServer
from tests.support.api import caption_body, png_bytes

BODIES: dict[str, tuple[str, dict[str, Any], int]] = {
    "image upload": (
        "/v1/images",
        {"files": {"image": ("cat.png", png_bytes(), "image/png")}},
        201,
    ),
    "job with files": (
        "/v1/jobs",
        {
            "files": [
                ("spec", (None, json.dumps({"task": "caption"}))),
                ("images", ("a.png", png_bytes(), "image/png")),
            ]
        },
        202,
    ),
    "JSONL batch": (
        "/v1/batches",
        {
            "files": {
                "file": ("b.jsonl", json.dumps(caption_body(custom_id="a")), "application/jsonl"),
                "spec": (None, json.dumps({"metadata": {"run": "1"}})),
            }
        },
        202,
    ),
}


@pytest.fixture
def live_url(runtime: Runtime) -> Iterator[str]:
    with LiveServer(create_app(runtime=runtime)) as server:
        yield server.url


Held = tuple[threading.Event, threading.Event]


@pytest.fixture
def held_parser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    """The multipart parser's first write waits until released: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    original = python_multipart.MultipartParser.write

    def write(self: python_multipart.MultipartParser, data: bytes) -> int:
        if not entered.is_set():
            entered.set()
            release.wait(timeout=90)
        return original(self, data)

    monkeypatch.setattr(python_multipart.MultipartParser, "write", write)
    yield entered, release
    release.set()


@pytest.mark.parametrize("name", list(BODIES))
def test_healthz_answers_while_a_multipart_body_is_being_parsed(
    live_url: str, held_parser: Held, name: str
) -> None:
    path, body, expected = BODIES[name]
    entered, release = held_parser
    answers: list[httpx.Response] = []

    def upload() -> None:
        with httpx.Client(timeout=120) as client:
            answers.append(client.post(f"{live_url}{path}", **body))

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert entered.wait(timeout=60), "the upload never reached the multipart parser"
        # The parser is held: on the event loop it would hold this request too (until the
        # timeout below fails the test); on a worker thread the loop answers at once.
        health = httpx.get(f"{live_url}/healthz", timeout=30)
        assert health.status_code == 200
        assert not answers, "the upload finished while its parser was held"
    finally:
        release.set()
        uploader.join(timeout=120)
    assert answers[0].status_code == expected, answers[0].text
