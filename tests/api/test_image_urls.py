"""Image URLs: fetched through the SSRF guard, with byte and time caps; refusals store nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from core.storage import image_key, sha256_hex
from tests.support.api import png_bytes, stored_state

IMAGE = png_bytes((80, 60))


class ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/cat.png":
            self._send(200, IMAGE)
        elif self.path == "/big.png":
            self._send(200, IMAGE + b"\0" * 8192)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("location", "/cat.png")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/slow.png":
            self.send_response(200)
            self.send_header("content-length", str(len(IMAGE)))
            self.end_headers()
            for byte in IMAGE:  # a slow drip, each byte well within the read timeout
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def app_client(settings: Settings, **changes: object) -> tuple[TestClient, Runtime]:
    runtime = Runtime.from_settings(settings.model_copy(update=changes))
    return TestClient(create_app(runtime=runtime)), runtime


def caption_url(url: str) -> dict:
    return {"task": "caption", "images": [{"url": url}]}


def test_an_image_url_is_fetched_and_stored(service_settings: Settings, image_server: str) -> None:
    client, runtime = app_client(service_settings, image_fetch_allow_private=True)
    with client:
        response = client.post("/v1/jobs", json=caption_url(f"{image_server}/cat.png"))
    assert response.status_code == 202, response.text
    assert runtime.storage.get(image_key(sha256_hex(IMAGE))) == IMAGE
    runtime.close()


@pytest.mark.parametrize(
    ("path", "status", "code", "changes"),
    [
        ("/missing.png", 422, "image_fetch_failed", {}),
        ("/redirect", 422, "image_fetch_failed", {}),
        ("/big.png", 413, "image_too_large", {"max_image_bytes": 4096}),
        ("/slow.png", 422, "image_fetch_failed", {"image_fetch_timeout_s": 1.0}),
    ],
)
def test_failed_fetches_are_4xx_and_store_nothing(
    service_settings: Settings,
    image_server: str,
    path: str,
    status: int,
    code: str,
    changes: dict,
) -> None:
    client, runtime = app_client(service_settings, image_fetch_allow_private=True, **changes)
    with client:
        response = client.post("/v1/jobs", json=caption_url(f"{image_server}{path}"))
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert stored_state(runtime) == (0, 0, 0)
    runtime.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/cat.png",
        "http://[::1]/cat.png",
        "http://169.254.169.254/latest/meta-data",
        "http://2130706433/cat.png",
        "http://[::ffff:127.0.0.1]/cat.png",
        "http://10.0.0.7/cat.png",
        "file:///etc/passwd",
        "gopher://example.com/x",
    ],
)
def test_non_public_targets_are_refused(client: TestClient, runtime: Runtime, url: str) -> None:
    response = client.post("/v1/jobs", json=caption_url(url))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_image_url"
    assert stored_state(runtime) == (0, 0, 0)


def test_a_private_server_is_refused_without_the_setting(
    client: TestClient, image_server: str
) -> None:
    response = client.post("/v1/jobs", json=caption_url(f"{image_server}/cat.png"))
    assert response.json()["code"] == "invalid_image_url"
