"""The direct S3 path against small local HTTP servers: retries, errors, and its signatures."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError

from core.retry import is_transient
from core.s3_direct import DirectS3

SECRET = "local-secret-key"  # noqa: S105 - a test credential for a local server


@dataclass
class Seen:
    """A request as it arrived on the wire."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """What the server answers, in order (the last answer repeats), and what it was asked."""

    answers: list[tuple[int, bytes, float]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


def _error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>says {code}</Message></Error>".encode()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    """A local HTTP server answering from a script; its base URL and the script."""
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            script.seen.append(Seen(self.command, self.path, headers, body))
            index = min(len(script.seen), len(script.answers)) - 1
            status, payload, delay_s = script.answers[index]
            time.sleep(delay_s)  # a slow server, for read timeouts
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/bucket", script
    httpd.shutdown()
    httpd.server_close()


def direct(base_url: str, sleeps: list[float] | None = None, **options: float) -> DirectS3:
    """A direct path with backoffs kept short (recorded, not slept, when sleeps is given)."""
    return DirectS3(
        base_url=base_url,
        region="us-east-1",
        credentials=Credentials("AKIDLOCAL", SECRET),
        backoff_s=0.001,
        sleep=sleeps.append if sleeps is not None else time.sleep,
        **options,  # type: ignore[arg-type]
    )


def test_unavailable_twice_then_answered(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, _error("SlowDown"), 0), (503, b"", 0), (200, b"the bytes", 0)]
    assert direct(url).get("k").body == b"the bytes"
    assert len(script.seen) == 3


def test_server_errors_raise_a_client_error_after_every_attempt(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [(500, _error("InternalError"), 0)]
    sleeps: list[float] = []
    with pytest.raises(ClientError) as raised:
        direct(url, sleeps, max_attempts=4).put("k", b"x", {})
    assert raised.value.response["Error"] == {
        "Code": "InternalError",
        "Message": "says InternalError",
    }
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert raised.value.operation_name == "PutObject"
    assert len(script.seen) == 4
    assert len(sleeps) == 3


def test_a_client_error_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(403, _error("AccessDenied"), 0), (200, b"", 0)]
    with pytest.raises(ClientError, match="AccessDenied"):
        direct(url).get("k")
    assert len(script.seen) == 1


def test_a_bodiless_answer_is_named_by_its_status(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(404, b"", 0)]
    with pytest.raises(ClientError) as raised:
        direct(url).head("k")
    assert raised.value.response["Error"] == {"Code": "404", "Message": "Not Found"}


def test_a_read_timeout_is_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(200, b"late", 1.0), (200, b"prompt", 0)]
    assert direct(url, read_timeout_s=0.2).get("k").body == b"prompt"
    assert len(script.seen) == 2


def test_a_refused_connection_is_retried_then_raised_as_botocore_does() -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(EndpointConnectionError) as raised:
        direct(f"http://127.0.0.1:{port}/bucket", sleeps, max_attempts=3).get("k")
    assert is_transient(raised.value)  # what core.retry and the worker's reads retry
    assert len(sleeps) == 2


def sigv4_signature(seen: Seen, secret: str) -> tuple[str, str]:
    """(the request's signature, the one SigV4 gives), recomputed from what arrived."""
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=\w+/(\d{8})/([\w-]+)/s3/aws4_request, "
        r"SignedHeaders=([\w;-]+), Signature=([0-9a-f]{64})",
        seen.headers["authorization"],
    )
    assert match, seen.headers["authorization"]
    day, region, signed, signature = match.groups()
    names = signed.split(";")
    canonical_headers = "".join(f"{name}:{seen.headers[name].strip()}\n" for name in names)
    canonical = "\n".join(
        [
            seen.method,
            seen.path,
            "",
            canonical_headers,
            signed,
            seen.headers["x-amz-content-sha256"],
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            seen.headers["x-amz-date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return signature, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_requests_carry_a_valid_sigv4_signature(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(200, b"", 0)]
    path = direct(url)
    body = b"image bytes"
    path.put("images/a b+c=ü", body, {"Content-Type": "image/png", "If-None-Match": "*"})
    path.get("images/a b+c=ü")
    put, get = script.seen
    assert put.path == get.path == "/bucket/images/a%20b%2Bc%3D%C3%BC"  # quoted once, as signed
    assert put.body == body
    assert put.headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert get.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert {"host", "if-none-match", "content-type"} <= set(
        put.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    )
    for seen in (put, get):
        signature, expected = sigv4_signature(seen, SECRET)
        assert signature == expected
    signature, expected = sigv4_signature(put, "another-secret")
    assert signature != expected  # the check does tell a wrong key apart
