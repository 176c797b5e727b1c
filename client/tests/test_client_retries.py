"""Retries over real HTTP: 429/5xx are retried with backoff honouring Retry-After, once per key."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from internvl_jobs_client import APIConnectionError, Client, InvalidRequestError, RateLimitError
from internvl_jobs_client._requests import RetryPolicy

JOB = {"id": "job_1", "status": "queued", "task": "caption", "model": "m", "created_at": "now"}


class ScriptedServer(ThreadingHTTPServer):
    """An HTTP server answering each request with the next (status, headers) of its script."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script = script
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.seen.append(dict(self.headers))
        status, headers = self.server.script.pop(0) if self.server.script else (200, {})
        body = JOB if status < 400 else {"code": f"code_{status}", "detail": "scripted"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"content-type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    servers: list[ScriptedServer] = []

    def start(script: list[tuple[int, dict[str, str]]]) -> ScriptedServer:
        server = ScriptedServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_429_and_503_are_retried_with_the_same_idempotency_key(scripted) -> None:  # type: ignore[no-untyped-def]
    server = scripted([(429, {"retry-after": "7"}), (503, {}), (202, {})])
    delays: list[float] = []
    with Client(server.url, sleep=delays.append) as client:
        job = client.submit("caption", [b"bytes"])
    assert job.id == "job_1"
    assert len(server.seen) == 3
    keys = {headers["Idempotency-Key"] for headers in server.seen}
    assert len(keys) == 1 and keys.pop().startswith("ivjc-")
    assert delays[0] == 7  # the server's Retry-After, not the shorter backoff
    assert 0 < delays[1] <= 1.0  # backoff of the second attempt (jittered)


def test_a_given_idempotency_key_is_used(scripted) -> None:  # type: ignore[no-untyped-def]
    server = scripted([(202, {})])
    with Client(server.url) as client:
        client.submit("caption", [b"x"], idempotency_key="order-42")
    assert server.seen[0]["Idempotency-Key"] == "order-42"


def test_retries_stop_at_the_limit_with_a_typed_error(scripted) -> None:  # type: ignore[no-untyped-def]
    server = scripted([(429, {"retry-after": "1"})] * 5)
    with Client(server.url, retry=RetryPolicy(max_retries=2), sleep=lambda _: None) as client:
        with pytest.raises(RateLimitError) as caught:
            client.submit("caption", [b"x"])
    assert len(server.seen) == 3
    assert caught.value.retry_after_s == 1 and caught.value.code == "code_429"


def test_client_errors_are_not_retried(scripted) -> None:  # type: ignore[no-untyped-def]
    server = scripted([(422, {})])
    with Client(server.url, sleep=lambda _: None) as client, pytest.raises(InvalidRequestError):
        client.submit("caption", [b"x"])
    assert len(server.seen) == 1


def test_an_unreachable_service_raises_after_retries() -> None:
    from devtools.harness import free_port

    delays: list[float] = []
    with Client(f"http://127.0.0.1:{free_port()}", sleep=delays.append) as client:
        with pytest.raises(APIConnectionError):
            client.get("job_1")
    assert len(delays) == 3
