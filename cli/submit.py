"""`internvl-jobs submit IMAGE... --task caption --wait`: a job from the command line
(`internvl-jobs submit CLIP --task video --question ...` for a video).

It speaks HTTP through the client library (internvl-jobs-client), like any backend service.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from core.config import get_settings

TASKS = ("caption", "vqa", "ocr", "compare", "chat", "prompt", "video")


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit images with a task; print the job, or with --wait its result."""
    try:
        from internvl_jobs_client import APIError, Client, InternVLJobsError, video_ref
    except ImportError:
        sys.stderr.write("internvl-jobs submit needs the client library: pip install ./client\n")
        return 2
    images, fields = args.images, _fields(args)
    if args.task == "video":
        if len(args.images) != 1:
            sys.stderr.write("internvl-jobs submit: --task video takes one video\n")
            return 2
        images = []
        fields["video"] = video_ref(args.images[0], num_frames=args.num_frames, fps=args.fps)
    elif args.num_frames is not None or args.fps is not None:
        sys.stderr.write("internvl-jobs submit: --num-frames and --fps need --task video\n")
        return 2
    settings = get_settings()
    url = args.url or settings.api_url
    api_key = args.api_key or settings.api_key or None
    try:
        with Client(url, api_key=api_key, timeout_s=args.timeout) as client:
            job = client.submit(args.task, images, **fields)
            if args.wait:
                job = client.wait(job.id, timeout_s=args.timeout)
    except APIError as exc:
        sys.stderr.write(f"internvl-jobs submit: {exc.status} {exc.code}: {exc.detail}\n")
        return 2
    except (InternVLJobsError, OSError, ValueError) as exc:  # ValueError: a bad schema file
        sys.stderr.write(f"internvl-jobs submit: {exc}\n")
        return 2
    if args.json_schema and args.wait and job.status == "succeeded" and not args.json:
        sys.stdout.write(json.dumps(job.result.json if job.result else None, indent=2) + "\n")
    elif args.json or not args.wait or job.status != "succeeded":
        sys.stdout.write(json.dumps(job.raw, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(f"{job.text}\n")
    return 1 if job.status in ("failed", "canceled", "expired") else 0


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
        "response_format": _schema_format(args.json_schema) if args.json_schema else None,
        "expires_after_s": args.expires_after,
        "question": args.question if args.task in ("vqa", "video") else None,
        "prompt": args.prompt if args.task != "chat" else None,
        "preset": args.preset,
        "messages": messages,
        "model": args.model,
        "params": params or None,
    }


def _schema_format(path: str) -> dict[str, Any]:
    """A json_schema response_format from a JSON Schema file, named after the file."""
    with open(path, encoding="utf-8") as handle:
        schema = json.load(handle)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64] or "schema"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def register(sub: Any) -> None:
    """Add the `submit` subcommand to the CLI."""
    p = sub.add_parser("submit", help=cmd_submit.__doc__)
    p.add_argument(
        "images",
        nargs="+",
        help="image files, sha256:... ids or http(s) URLs (--task video: one video, likewise)",
    )
    p.add_argument("--task", default="caption", choices=TASKS)
    p.add_argument("--question", help="the question of a vqa or video job")
    p.add_argument("--prompt", help="instruction of a prompt job (or override; chat: the turn)")
    p.add_argument("--preset", help="a named instruction for --task prompt")
    p.add_argument("--model", help="model alias (default: the service's default model)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-tiles", type=int, help="tile cap per image (per frame for a video)")
    p.add_argument("--num-frames", type=int, help="frames a video job reads (default 8)")
    p.add_argument("--fps", type=float, help="video: sample this many frames per second")
    p.add_argument(
        "--json-schema", metavar="FILE", help="answer JSON matching this JSON Schema file"
    )
    p.add_argument(
        "--expires-after", type=int, metavar="S", help="give up if not started within S seconds"
    )
    p.add_argument("--wait", action="store_true", help="wait for the result and print its text")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at most")
    p.add_argument("--json", action="store_true", help="print the whole job as JSON")
    p.add_argument("--url", help="service URL (default: INTERNVL_JOBS_API_URL)")
    p.add_argument("--api-key", help="API key (default: INTERNVL_JOBS_API_KEY)")
    p.set_defaults(func=cmd_submit)
