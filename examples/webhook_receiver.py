"""Receive internvl-jobs webhooks and verify their Standard Webhooks signatures (stdlib only).

Usage: WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py [PORT]
The secret comes from GET /v1/webhooks/secret. Any Standard Webhooks library (standardwebhooks,
svix) verifies these webhooks too; this is what such a library does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 5 * 60  # refuse replays of old messages


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The event, if one signature matches and the timestamp is recent; ValueError if not."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        raise ValueError("webhook-timestamp is too old or in the future")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body  # the raw body, before any JSON parsing
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # During a secret rotation the header holds several "v1,<signature>" entries.
    for entry in headers["webhook-signature"].split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return json.loads(body)
    raise ValueError("no valid signature")


class Handler(BaseHTTPRequestHandler):
    """Answers 204 to valid webhooks (so they are not retried) and 401 to the rest."""

    seen: set[str] = set()  # webhook-ids already handled: retries and replays repeat them

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = verify(os.environ["WEBHOOK_SECRET"], self.headers, body)
        except (KeyError, ValueError):
            self.send_response(401)
            self.end_headers()
            return
        if self.headers["webhook-id"] not in self.seen:
            self.seen.add(self.headers["webhook-id"])
            job = event["data"]
            text = (job.get("result") or {}).get("text")
            print(event["type"], job["id"], job["status"], text, flush=True)  # noqa: T201
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
