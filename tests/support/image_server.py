"""A loopback HTTP server's handler that serves test images: plain, oversized, redirected,
dripped slowly, or missing."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

from tests.support.api import png_bytes
from tests.support.videos import make_clip

IMAGE = png_bytes((80, 60))
CLIP = make_clip("mp4", seconds=1.0, fps=8)


class ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/cat.png":
            self._send(200, IMAGE)
        elif self.path == "/clip.mp4":
            self._send(200, CLIP, content_type="video/mp4")
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

    def _send(self, status: int, body: bytes, content_type: str = "image/png") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass
