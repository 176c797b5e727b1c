"""`internvl-jobs submit IMAGE... --task caption --wait`: a job from the command line.

It speaks HTTP through the client library (internvl-jobs-client), like any backend service.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.config import get_settings

TASKS = ("caption", "vqa", "ocr", "compare", "chat", "prompt")


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit images with a task; print the job, or with --wait its result."""
    try:
        from internvl_jobs_client import APIError, Client, InternVLJobsError
    except ImportError:
        sys.stderr.write("internvl-jobs submit needs the client library: pip install ./client\n")
        return 2
    settings = get_settings()
    url = args.url or settings.api_url
    api_key = args.api_key or settings.api_key or None
    try:
        with Client(url, api_key=api_key, timeout_s=args.timeout) as client:
            job = client.submit(args.task, args.images, **_fields(args))
            if args.wait:
                job = client.wait(job.id, timeout_s=args.timeout)
    except APIError as exc:
        sys.stderr.write(f"internvl-jobs submit: {exc.status} {exc.code}: {exc.detail}\n")
        return 2
    except (InternVLJobsError, OSError) as exc:
        sys.stderr.write(f"internvl-jobs submit: {exc}\n")
        return 2
    if args.json or not args.wait or job.status != "succeeded":
        sys.stdout.write(json.dumps(job.raw, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(f"{job.text}\n")
    return 1 if job.status in ("failed", "canceled") else 0


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        params["max_new_tokens"] = args.max_new_tokens
    if args.max_tiles is not None:
        params["max_tiles"] = args.max_tiles
    messages = None
    if args.task == "chat":
        content: list[dict[str, Any]] = [
            {"type": "image", "image": i} for i in range(len(args.images))
        ]
        content.append({"type": "text", "text": args.prompt or args.question or ""})
        messages = [{"role": "user", "content": content}]
    return {
        "question": args.question if args.task == "vqa" else None,
        "prompt": args.prompt if args.task != "chat" else None,
        "preset": args.preset,
        "messages": messages,
        "model": args.model,
        "params": params or None,
    }


def register(sub: Any) -> None:
    """Add the `submit` subcommand to the CLI."""
    p = sub.add_parser("submit", help=cmd_submit.__doc__)
    p.add_argument("images", nargs="+", help="image files, sha256:... ids or http(s) URLs")
    p.add_argument("--task", default="caption", choices=TASKS)
    p.add_argument("--question", help="the question of a vqa job")
    p.add_argument("--prompt", help="instruction of a prompt job (or override; chat: the turn)")
    p.add_argument("--preset", help="a named instruction for --task prompt")
    p.add_argument("--model", help="model alias (default: the service's default model)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-tiles", type=int)
    p.add_argument("--wait", action="store_true", help="wait for the result and print its text")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at most")
    p.add_argument("--json", action="store_true", help="print the whole job as JSON")
    p.add_argument("--url", help="service URL (default: INTERNVL_JOBS_API_URL)")
    p.add_argument("--api-key", help="API key (default: INTERNVL_JOBS_API_KEY)")
    p.set_defaults(func=cmd_submit)
