"""Submit an image to a running internvl-jobs service and print the finished job.

Usage: python examples/quickstart.py [IMAGE] [--url http://127.0.0.1:8000] [--task caption]
Needs only httpx; a backend service integrating the API does the same three steps.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("image", nargs="?", default=str(HERE / "images" / "cat.jpg"))
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default="caption")
    parser.add_argument("--question", default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body: dict[str, object] = {
        "task": args.task,
        "images": [{"data": base64.b64encode(Path(args.image).read_bytes()).decode()}],
        "params": {"max_new_tokens": 64},
    }
    if args.question:
        body["question"] = args.question
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        # 1. submit: 202 Accepted with the queued job
        submitted = client.post("/v1/jobs", json=body)
        if submitted.status_code != 202:
            print(submitted.text, file=sys.stderr)  # noqa: T201
            return 1
        job = submitted.json()
        # 2. poll until the job is terminal
        while job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").json()
    # 3. read the result
    print(json.dumps(job, indent=2, ensure_ascii=False))  # noqa: T201
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
