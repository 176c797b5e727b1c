"""Submit one caption job to the API on 127.0.0.1:8000 and wait for it: the stack's end check.

scripts/containers pipes this file into `python -` inside the API container (httpx and Pillow
are there), with the API key as the first argument. Exit status 0 only when the job succeeded.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time

import httpx
from PIL import Image

TERMINAL = {"succeeded", "failed", "canceled"}


def main(api_key: str, timeout_s: float = 300.0) -> int:
    """Submit a caption job for a small PNG, poll it to the end, print it."""
    png = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(png, "PNG")
    body = {
        "task": "caption",
        "images": [{"data": base64.b64encode(png.getvalue()).decode()}],
        "params": {"max_new_tokens": 8},
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url="http://127.0.0.1:8000", headers=headers, timeout=30) as client:
        response = client.post("/v1/jobs", json=body)
        if response.status_code != 202:
            print(response.status_code, response.text, file=sys.stderr)
            return 1
        job = response.json()
        deadline = time.monotonic() + timeout_s
        while job["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    print(json.dumps(job, indent=2))
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
