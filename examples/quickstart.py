"""Submit an image to a running internvl-jobs service and print the finished job.

Usage: python examples/quickstart.py [IMAGE] [--url http://127.0.0.1:8000] [--task caption]
Needs only the client library (pip install ./client), as a backend service would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internvl_jobs_client import APIError, Client

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("image", nargs="?", default=str(HERE / "images" / "cat.jpg"))
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default="caption")
    parser.add_argument("--question", default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    with Client(args.url, api_key=args.api_key) as client:
        try:
            # 1. submit: the job comes back queued; 2. wait: long-polls until it is terminal
            job = client.submit(
                args.task, [args.image], question=args.question, params={"max_new_tokens": 64}
            )
            job = client.wait(job.id, timeout_s=300)
        except APIError as exc:  # a problem+json answer: stable code, human detail
            print(f"{exc.status} {exc.code}: {exc.detail}", file=sys.stderr)  # noqa: T201
            return 1
    # 3. read the result
    print(json.dumps(job.raw, indent=2, ensure_ascii=False))  # noqa: T201
    return 0 if job.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
